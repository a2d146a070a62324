//! Live revocation and host enforcement end to end, on stock OpenSSH (issue 4, "Done
//! means"): real `sshd` logins as `writ_alice` through `writ-principals`, against a real CA
//! over HTTP.
//!
//! - Offline mode: completing a task, or an admin revoking it, makes the next login fail
//!   once `writ-principals sync` has run (each explicit `sync` stands for one sync
//!   interval elapsing; before it, the host still admits — the documented window).
//! - sshd's `RevokedKeys` KRL refuses the certificate before `writ-principals` runs, even
//!   when the local feed alone would admit it; `ssh-keygen -Q` agrees.
//! - `sync` refuses a replayed older feed, a feed signed by a foreign key and a stale feed
//!   served by a man in the middle, leaving the installed files untouched; `check` denies
//!   when the feed is missing or stale.
//! - Online mode: the CA's answer takes effect at once; with the CA stopped, `check` falls
//!   back to a fresh local feed, and denies within the timeout when that is missing or
//!   stale (and when the CA hangs).
//! - `cert.used` is recorded once per real login, by the PAM session hook
//!   (`pam_exec` → `writ-principals session`), and never for a probe that holds only the
//!   public certificate.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::agents::ADMINS_AND_HOSTS;
use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp};
use common::sshd::{
    SshOutcome, Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd, ssh_login,
};
use common::{http, now, public_key, runtime, ssh_keygen};
use serde_json::json;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use writ::audit::event;
use writ::revocation::feed::{self, Feed, SignedFeed};

const ALICE: &str = "writ_alice";
const HOST_NAME: &str = "web-01.prod.example.com";
const OWNER: &str = "agent-1";
const ADMIN: &str = "admin-1";
const HOST_SUBJECT: &str = "host:web-01";
/// What sshd (LogLevel VERBOSE) logs when the AuthorizedPrincipalsCommand exits non-zero.
const PRINCIPALS_REFUSED: &str = "failed, status 1";

/// Agents may log in as `writ_alice` on the prod hosts; `admin-*` are admins; `host:*` are
/// hosts that may ask `POST /v1/authorize` about the prod hosts.
fn policies() -> String {
    format!(
        r#"name = "agents"
subject = "agent-*"
logins = ["{ALICE}"]
hosts = ["*.prod.example.com"]
{ADMINS_AND_HOSTS}"#
    )
}

/// A CA, its IdP, a host directory synced from the CA, and an agent key.
struct World {
    idp: TestIdp,
    /// `None` once [`World::stop_ca`] ran.
    ca: Option<TestCa>,
    host: TestHost,
    dir: tempfile::TempDir,
    key: PathBuf,
}

/// A certificate issued for a new task, written to `<dir>/<name>-cert.pub`.
struct Issued {
    task_id: String,
    serial: String,
    certificate: String,
    cert_path: PathBuf,
}

impl Issued {
    /// The certificate as sshd's `%k`.
    fn blob(&self) -> &str {
        self.certificate.split_whitespace().nth(1).expect("blob")
    }
}

fn host_config(ca_url: &str, host: &TestHost, extra: &str) -> String {
    format!(
        "ca_url = \"{ca_url}\"\nhost_name = \"{HOST_NAME}\"\nstate_dir = \"{state}\"\n{extra}",
        state = host.state_dir().display()
    )
}

fn world() -> World {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(&idp, "", &policies());
    let host = TestHost::new(common::writ_principals());
    host.write_host_config(&host_config(&ca.url, &host, ""));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let w = World {
        idp,
        ca: Some(ca),
        host,
        dir,
        key,
    };
    sync_ok(&w.host);
    w
}

impl World {
    fn ca(&self) -> &TestCa {
        self.ca.as_ref().expect("the CA is running")
    }

    /// Stop the CA and wait (polling, with a deadline) until its port refuses
    /// connections.
    fn stop_ca(&mut self) {
        let ca = self.ca.take().expect("the CA is running");
        let url = ca.url.clone();
        drop(ca);
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .expect("CA address");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ if Instant::now() > deadline => panic!("the CA at {url} is still accepting"),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn token(&self, sub: &str) -> String {
        self.idp.token(Key::Rsa, sub)
    }

    /// Open a task for `writ_alice` on the web hosts; its certificate goes to
    /// `<dir>/<name>-cert.pub`.
    fn issue(&self, name: &str) -> Issued {
        self.issue_for(name, 900)
    }

    /// [`World::issue`] for a task of `task_ttl` seconds.
    fn issue_for(&self, name: &str, task_ttl: u64) -> Issued {
        let mut request = certificate_request(
            &public_key(&self.key),
            &[ALICE],
            &["web-*.prod.example.com"],
            None,
        );
        request["task"]["ttl_seconds"] = task_ttl.into();
        let response = self
            .ca()
            .request_certificate(Some(&self.token(OWNER)), &request);
        assert_eq!(response.status, 201, "{}", response.text);
        let body = response.json();
        let certificate = body["certificate"]
            .as_str()
            .expect("certificate")
            .to_owned();
        let cert_path = self.dir.path().join(format!("{name}-cert.pub"));
        fs::write(&cert_path, format!("{certificate}\n")).expect("write cert");
        Issued {
            task_id: body["task_id"].as_str().expect("task_id").to_owned(),
            serial: body["serial"].as_str().expect("serial").to_owned(),
            certificate,
            cert_path,
        }
    }

    /// The owner completes the task.
    fn complete(&self, task_id: &str) {
        let response = http::post(
            &format!("{}/v1/tasks/{task_id}/complete", self.ca().url),
            Some(&self.token(OWNER)),
            &json!({"reason": "done"}),
        );
        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(response.json()["state"], "completed");
    }

    /// An admin revokes the task.
    fn admin_revoke(&self, task_id: &str) {
        let response = http::post(
            &format!("{}/v1/tasks/{task_id}/revoke", self.ca().url),
            Some(&self.token(ADMIN)),
            &json!({"reason": "incident 42"}),
        );
        assert_eq!(response.status, 200, "{}", response.text);
        assert_eq!(response.json()["state"], "revoked");
    }

    fn login(&self, sshd: &Sshd, cert: &Issued) -> SshOutcome {
        ssh_login(sshd.port(), ALICE, &self.key, Some(&cert.cert_path))
    }

    fn assert_login_ok(&self, sshd: &Sshd, cert: &Issued, what: &str) {
        let outcome = self.login(sshd, cert);
        assert!(
            outcome.success,
            "{what}: login failed: {}\n--- sshd log ---\n{}",
            outcome.stderr,
            sshd.log()
        );
    }

    /// Asserts the login fails; returns what sshd logged during the attempt.
    fn assert_login_denied(&self, sshd: &Sshd, cert: &Issued, what: &str) -> String {
        self.timed_login_denied(sshd, cert, what).0
    }

    /// Like [`World::assert_login_denied`], also returning how long the ssh call took.
    fn timed_login_denied(&self, sshd: &Sshd, cert: &Issued, what: &str) -> (String, Duration) {
        let mark = sshd.log().len();
        let started = Instant::now();
        let outcome = self.login(sshd, cert);
        let elapsed = started.elapsed();
        let log = sshd.log()[mark..].to_owned();
        assert!(
            !outcome.success,
            "{what}: login succeeded: {}\n--- sshd log ---\n{log}",
            outcome.stdout
        );
        assert!(
            outcome.stderr.contains("Permission denied"),
            "{what}: refused by authentication, not by something else: {}",
            outcome.stderr
        );
        (log, elapsed)
    }

    /// Like [`World::assert_login_denied`], and sshd says the principals command refused;
    /// returns how long the ssh call took.
    fn assert_denied_by_principals(&self, sshd: &Sshd, cert: &Issued, what: &str) -> Duration {
        let (log, elapsed) = self.timed_login_denied(sshd, cert, what);
        assert!(
            log.contains("AuthorizedPrincipalsCommand") && log.contains(PRINCIPALS_REFUSED),
            "{what}: sshd log does not show writ-principals refusing:\n{log}"
        );
        elapsed
    }
}

/// Run `writ-principals sync` (one sync interval elapsing).
fn sync(host: &TestHost) -> Output {
    Command::new(host.principals_bin())
        .args(["sync", "--config"])
        .arg(host.host_config_path())
        .output()
        .expect("run writ-principals sync")
}

fn sync_ok(host: &TestHost) {
    let out = sync(host);
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `writ-principals check --config <config> -- <login> <blob>` as sshd would.
fn principals_check(host: &TestHost, config: &Path, blob: &str) -> Output {
    Command::new(host.principals_bin())
        .args(["check", "--config"])
        .arg(config)
        .args(["--", ALICE, blob])
        .output()
        .expect("run writ-principals check")
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn revocations_path(host: &TestHost) -> PathBuf {
    host.state_dir().join("revocations.json")
}

fn krl_path(host: &TestHost) -> PathBuf {
    host.state_dir().join("revoked.krl")
}

/// The (unverified) feed inside a signed feed document.
fn feed_of(signed_json: &[u8]) -> Feed {
    let signed = feed::parse(signed_json).expect("signed feed");
    serde_json::from_str(&signed.feed).expect("feed json")
}

/// `GET /v1/revocations?version=2` (the feed with its binding, which `sync` requires), as
/// served.
fn ca_feed(ca_url: &str) -> String {
    let response = http::get(&format!("{ca_url}/v1/revocations?version=2"));
    assert_eq!(response.status, 200, "{}", response.text);
    response.text
}

/// The CA's active signing key, decrypted as the CA does.
fn ca_signing_key(ca: &TestCa) -> PrivateKey {
    let rows = runtime()
        .block_on(ca.state.store.ca_keys())
        .expect("ca keys");
    let row = rows
        .iter()
        .find(|r| r.kind == writ::store::KeyKind::User && r.state == writ::store::KeyState::Active)
        .expect("an active user CA key");
    PrivateKey::from_openssh(&row.private_key)
        .expect("parse CA key")
        .decrypt("test passphrase")
        .expect("decrypt CA key")
}

/// A feed document revoking nothing, signed with `key` as the CA signs its feeds, bound
/// to the trust bundle and KRL that `bound_to` (a feed document) names.
fn signed_feed(key: &PrivateKey, issued_at: i64, sequence: i64, bound_to: &[u8]) -> String {
    let feed = Feed {
        version: feed::VERSION,
        issued_at,
        sequence,
        revoked_tasks: vec![],
        revoked_serials: vec![],
        binding: feed_of(bound_to).binding,
    };
    let json = feed.to_json();
    let signature = key
        .sign(feed::NAMESPACE, HashAlg::Sha512, json.as_bytes())
        .expect("sign feed")
        .to_pem(LineEnding::LF)
        .expect("signature pem");
    serde_json::to_string(&SignedFeed {
        feed: json,
        signature,
    })
    .expect("feed document")
}

/// Write a state file the way `sync` leaves it (0644, readable by `nobody`).
fn install_state_file(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
}

/// `ssh-keygen -Q -f <krl> <cert>`: does the KRL revoke the certificate?
fn krl_revokes(krl: &Path, cert: &Path) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .expect("ssh-keygen -Q");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "ssh-keygen -Q failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.contains("REVOKED")
}

fn offline_end_of_task_denies_after_one_sync(end: impl FnOnce(&World, &str)) {
    let w = world();
    let sshd = Sshd::start(&w.host, SshdOptions::default());
    let task = w.issue("task");
    w.assert_login_ok(&sshd, &task, "live task");

    end(&w, &task.task_id);
    // Offline, writ-principals reads only the local feed: until the next sync the host
    // still admits the certificate. This is the window a sync interval leaves open.
    w.assert_login_ok(&sshd, &task, "before the sync interval elapsed");
    assert!(
        !feed_of(&read(&revocations_path(&w.host)))
            .revoked_tasks
            .iter()
            .any(|t| t.task_id == task.task_id)
    );

    sync_ok(&w.host);
    assert!(
        feed_of(&read(&revocations_path(&w.host)))
            .revoked_tasks
            .iter()
            .any(|t| t.task_id == task.task_id),
        "the synced feed lists the task"
    );
    w.assert_denied_by_principals(&sshd, &task, "after one sync");
}

#[test]
fn completing_a_task_denies_the_next_login_after_one_sync() {
    offline_end_of_task_denies_after_one_sync(|w, task_id| w.complete(task_id));
}

#[test]
fn admin_revoke_denies_the_next_login_after_one_sync() {
    offline_end_of_task_denies_after_one_sync(|w, task_id| w.admin_revoke(task_id));
}

#[test]
fn the_krl_refuses_before_writ_principals_runs() {
    let w = world();
    let sshd = Sshd::start(
        &w.host,
        SshdOptions {
            revoked_keys: Some(krl_path(&w.host)),
            ..SshdOptions::default()
        },
    );
    let task = w.issue("task");
    w.assert_login_ok(&sshd, &task, "live task, KRL in place");
    assert!(!krl_revokes(&krl_path(&w.host), &task.cert_path));
    let feed_before = read(&revocations_path(&w.host));

    w.complete(&task.task_id);
    sync_ok(&w.host);
    assert!(
        krl_revokes(&krl_path(&w.host), &task.cert_path),
        "ssh-keygen -Q: the synced KRL revokes serial {}",
        task.serial
    );

    // Put the pre-revocation feed back (signed, still fresh): writ-principals alone now
    // admits the certificate…
    install_state_file(&revocations_path(&w.host), &feed_before);
    let check = principals_check(&w.host, &w.host.host_config_path(), task.blob());
    assert!(
        check.status.success(),
        "writ-principals alone would admit with the old feed: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("writ:{}:{ALICE}", task.task_id)
    );

    // …but sshd refuses the certificate from the KRL before asking writ-principals.
    let log = w.assert_login_denied(&sshd, &task, "KRL lists the serial");
    assert!(
        log.contains("revoked by file") && log.contains("revoked.krl"),
        "sshd names the KRL: {log}"
    );
    assert!(
        !log.contains(PRINCIPALS_REFUSED),
        "writ-principals was not the one refusing: {log}"
    );
}

/// A "man in the middle" between a host and the CA: relays the trust bundle and the KRL
/// from the real CA, and serves whatever revocation feed the test sets.
struct Mitm {
    url: String,
    addr: SocketAddr,
    feed: Arc<Mutex<String>>,
    feed_requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Mitm {
    fn start(ca_url: &str) -> Mitm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind MITM");
        let addr = listener.local_addr().expect("addr");
        let feed = Arc::new(Mutex::new(String::new()));
        let feed_requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ca_url, feed, feed_requests, stop) = (
                ca_url.to_owned(),
                Arc::clone(&feed),
                Arc::clone(&feed_requests),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        Mitm::serve(stream, &ca_url, &feed, &feed_requests);
                    }
                }
            })
        };
        Mitm {
            url: format!("http://{addr}"),
            addr,
            feed,
            feed_requests,
            stop,
            thread: Some(thread),
        }
    }

    fn set_feed(&self, feed: &str) {
        *self.feed.lock().expect("lock") = feed.to_owned();
    }

    fn feed_requests(&self) -> usize {
        self.feed_requests.load(Ordering::SeqCst)
    }

    /// One request per connection (`Connection: close`).
    fn serve(stream: TcpStream, ca_url: &str, feed: &Mutex<String>, feed_requests: &AtomicUsize) {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let route = path.split('?').next().unwrap_or_default();
        let (status, content_type, body) = match route {
            "/v1/ca/trusted-keys" | "/v1/krl" => {
                let mut response = ureq::get(&format!("{ca_url}{path}"))
                    .call()
                    .expect("relay to the CA");
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = response.body_mut().read_to_vec().expect("relay body");
                ("200 OK", content_type, body)
            }
            "/v1/revocations" => {
                feed_requests.fetch_add(1, Ordering::SeqCst);
                let body = feed.lock().expect("lock").clone().into_bytes();
                ("200 OK", "application/json".to_owned(), body)
            }
            _ => (
                "404 Not Found",
                "text/plain".to_owned(),
                b"not found".to_vec(),
            ),
        };
        let mut stream = reader.into_inner();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&body);
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn replayed_foreign_missing_and_stale_feeds_deny() {
    let w = world();
    let sshd = Sshd::start(&w.host, SshdOptions::default());
    let done = w.issue("done");
    let live = w.issue("live");
    w.assert_login_ok(&sshd, &done, "task to be completed, while live");
    w.assert_login_ok(&sshd, &live, "live task");

    let old_feed = ca_feed(&w.ca().url);
    w.complete(&done.task_id);
    sync_ok(&w.host);
    let installed = read(&revocations_path(&w.host));
    assert!(feed_of(&installed).sequence > feed_of(old_feed.as_bytes()).sequence);
    w.assert_denied_by_principals(&sshd, &done, "completed task, synced");

    // The host now syncs through a man in the middle that relays the real trust bundle
    // and KRL. Control: relaying the CA's real, current feed too is accepted.
    let mitm = Mitm::start(&w.ca().url);
    let real_config = host_config(&w.ca().url, &w.host, "");
    w.host
        .write_host_config(&host_config(&mitm.url, &w.host, ""));
    mitm.set_feed(&ca_feed(&w.ca().url));
    sync_ok(&w.host);
    let installed = read(&revocations_path(&w.host));
    let krl = read(&krl_path(&w.host));
    let trusted = read(&w.host.trusted_keys_path());

    let refused = |feed: &str, why: &str, expect: &str| {
        mitm.set_feed(feed);
        let asked = mitm.feed_requests();
        let out = sync(&w.host);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{why}: sync accepted it");
        assert!(mitm.feed_requests() > asked, "{why}: the feed was fetched");
        assert!(stderr.contains(expect), "{why}: {stderr}");
        assert_eq!(
            read(&revocations_path(&w.host)),
            installed,
            "{why}: revocations.json unchanged"
        );
        assert_eq!(read(&krl_path(&w.host)), krl, "{why}: KRL unchanged");
        assert_eq!(
            read(&w.host.trusted_keys_path()),
            trusted,
            "{why}: trust bundle unchanged"
        );
        w.assert_denied_by_principals(&sshd, &done, why);
    };

    // A replay of the feed captured before the completion: validly signed, still
    // fresh, but older than the installed one.
    refused(&old_feed, "replayed older feed", "backwards");

    // A newer-looking feed that unrevokes everything, signed by a key the host does not
    // trust, with `ssh-keygen -Y sign` in the feed namespace.
    let foreign_key = ssh_keygen(w.dir.path(), "foreign", &["-t", "ed25519"]);
    let mut forged: Feed = feed_of(&installed);
    forged.issued_at = now();
    forged.sequence += 1000;
    forged.revoked_tasks.clear();
    forged.revoked_serials.clear();
    let forged_json = forged.to_json();
    let message = w.dir.path().join("forged-feed");
    fs::write(&message, &forged_json).expect("write forged feed");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", feed::NAMESPACE, "-f"])
        .arg(&foreign_key)
        .arg(&message)
        .status()
        .expect("ssh-keygen -Y sign");
    assert!(status.success());
    let signature = fs::read_to_string(w.dir.path().join("forged-feed.sig")).expect("sig");
    let forged_doc = serde_json::to_string(&SignedFeed {
        feed: forged_json,
        signature,
    })
    .expect("json");
    refused(&forged_doc, "feed signed by a foreign key", "signature");

    // Signed by the real CA key, newer, but an hour old: stale.
    let ca_key = ca_signing_key(w.ca());
    let sequence = feed_of(&installed).sequence + 1000;
    let stale = signed_feed(&ca_key, now() - 3600, sequence, &installed);
    refused(&stale, "stale feed", "stale");
    drop(mitm);
    w.host.write_host_config(&real_config);

    // On the host itself: the live task is admitted with the synced feed…
    w.assert_login_ok(&sshd, &live, "live task, fresh feed");
    // …denied with no feed…
    fs::remove_file(revocations_path(&w.host)).expect("remove feed");
    w.assert_denied_by_principals(&sshd, &live, "missing feed");
    // …denied with a stale one (CA-signed, revoking nothing)…
    install_state_file(revocations_path(&w.host).as_path(), stale.as_bytes());
    w.assert_denied_by_principals(&sshd, &live, "stale feed");
    // …and admitted again with the same document freshly issued (control).
    let fresh = signed_feed(&ca_key, now(), sequence, &installed);
    install_state_file(revocations_path(&w.host).as_path(), fresh.as_bytes());
    w.assert_login_ok(&sshd, &live, "fresh CA-signed feed");
}

/// Writes the host's own token (for the `hosts` policy) into the host directory,
/// readable by `nobody` (sshd runs the principals command as `nobody`).
fn write_host_token(idp: &TestIdp, host: &TestHost) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = host.dir().join("host-token");
    fs::write(&path, idp.token(Key::Rsa, HOST_SUBJECT)).expect("write token");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod token");
    path
}

fn online_world(timeout: &str) -> World {
    let w = world();
    let token = write_host_token(&w.idp, &w.host);
    w.host.write_host_config(&host_config(
        &w.ca().url,
        &w.host,
        &format!(
            "mode = \"online\"\ntoken_file = \"{}\"\ntimeout = \"{timeout}\"\n",
            token.display()
        ),
    ));
    w
}

#[test]
fn online_mode_denies_at_once_and_falls_back_only_to_a_fresh_feed() {
    let mut w = online_world("1s");
    let sshd = Sshd::start(&w.host, SshdOptions::default());
    let done = w.issue("done");
    let live = w.issue("live");
    w.assert_login_ok(&sshd, &done, "task to be completed, while live");
    w.assert_login_ok(&sshd, &live, "live task");

    // Completion takes effect at the next login, with no sync: the local feed alone still
    // admits the certificate (shown with an offline config on the same state), so the
    // CA's online answer is what refuses it.
    w.complete(&done.task_id);
    let offline = w.host.dir().join("offline.toml");
    fs::write(&offline, host_config(&w.ca().url, &w.host, "")).expect("write offline config");
    let local = principals_check(&w.host, &offline, done.blob());
    assert!(
        local.status.success(),
        "the local feed alone still admits: {}",
        String::from_utf8_lossy(&local.stderr)
    );
    w.assert_denied_by_principals(&sshd, &done, "online, completed, no sync");
    w.assert_login_ok(&sshd, &live, "online, live task");

    // Stop the CA. With the fresh local feed, check falls back and admits.
    let ca_key = ca_signing_key(w.ca());
    let ca_url = w.ca().url.clone();
    let synced = read(&revocations_path(&w.host));
    w.stop_ca();
    w.assert_login_ok(&sshd, &live, "CA stopped, fresh local feed");

    // CA stopped and no local feed, or a stale one: denied, within the timeout.
    fs::remove_file(revocations_path(&w.host)).expect("remove feed");
    let elapsed = w.assert_denied_by_principals(&sshd, &live, "CA stopped, feed missing");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let sequence = i64::MAX / 2;
    install_state_file(
        &revocations_path(&w.host),
        signed_feed(&ca_key, now() - 3600, sequence, &synced).as_bytes(),
    );
    let elapsed = w.assert_denied_by_principals(&sshd, &live, "CA stopped, feed stale");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");

    // A CA that accepts connections and never answers: every check waits out the 1 s
    // timeout, then decides by the local feed.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind silent CA");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let config = fs::read_to_string(w.host.host_config_path()).expect("config");
    w.host
        .write_host_config(&config.replace(&ca_url, &silent_url));
    install_state_file(
        &revocations_path(&w.host),
        signed_feed(&ca_key, now(), sequence, &synced).as_bytes(),
    );
    let started = Instant::now();
    w.assert_login_ok(&sshd, &live, "CA hung, fresh local feed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    fs::remove_file(revocations_path(&w.host)).expect("remove feed");
    let elapsed = w.assert_denied_by_principals(&sshd, &live, "CA hung, feed missing");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "the denial waited for the timeout and no longer: {elapsed:?}"
    );
    drop(silent);
}

const PAM_SSHD: &str = "/etc/pam.d/sshd";
/// Trailing comment marking the line this test adds (PAM strips `#…` from a line).
const PAM_MARKER: &str = "# writ-test: revocation_e2e pam hook";

/// Serialises tests that change the global `/etc/pam.d/sshd`.
static PAM_LOCK: Mutex<()> = Mutex::new(());

/// Adds one line to `/etc/pam.d/sshd` and puts the original back on drop (also when the
/// test panics). Lines left behind by a killed earlier run are removed first.
struct PamHook {
    original: String,
}

impl PamHook {
    fn install(line: &str) -> PamHook {
        let current = fs::read_to_string(PAM_SSHD).unwrap_or_else(|e| {
            panic!("{PAM_SSHD}: {e} (installed with openssh-server on Debian)")
        });
        let original = if current.contains(PAM_MARKER) {
            current
                .lines()
                .filter(|l| !l.contains(PAM_MARKER))
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            current
        };
        // Constructed before the write, so a failure below still restores the file.
        let hook = PamHook { original };
        let mut text = hook.original.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{line} {PAM_MARKER}\n"));
        fs::write(PAM_SSHD, text).unwrap_or_else(|e| panic!("write {PAM_SSHD}: {e}"));
        hook
    }
}

impl Drop for PamHook {
    fn drop(&mut self) {
        let _ = fs::write(PAM_SSHD, &self.original);
    }
}

/// `ssh` offering the certificate `<dir>/probe-cert.pub` for the public key
/// `<dir>/probe.pub`, with no private key anywhere: what anyone who saw the certificate can
/// do. ssh sends the key query, sshd runs the principals command and answers "PK_OK",
/// and ssh then has nothing to sign with.
///
/// The identity is named by its `.pub` file: OpenSSH (9.2) skips an `-i` whose private key
/// file does not exist ("Identity file … not accessible") and would never offer the
/// certificate, while a public key file given to `-i` is offered.
fn ssh_probe(port: u16, dir: &Path) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("20")
        .arg("ssh")
        .arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(dir.join("probe.pub"))
        .arg("-o")
        .arg(format!(
            "CertificateFile={}",
            dir.join("probe-cert.pub").display()
        ));
    for opt in [
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "PasswordAuthentication=no",
        "ConnectTimeout=10",
    ] {
        cmd.arg("-o").arg(opt);
    }
    cmd.arg("-p")
        .arg(port.to_string())
        .arg(format!("{ALICE}@127.0.0.1"))
        .arg("echo probe-got-in")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ssh probe")
}

#[test]
fn cert_used_is_recorded_once_per_real_login_and_never_for_a_probe() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let w = online_world("2s");
    let (_hook, sshd, pam_log) = pam_host(&w, "optional");
    let task = w.issue("task");
    let used = || w.ca().audit_events(event::CERT_USED);
    assert!(used().is_empty());

    let diagnostics = || {
        format!(
            "--- sshd log ---\n{}\n--- pam_exec log ---\n{}",
            sshd.log(),
            fs::read_to_string(&pam_log).unwrap_or_default()
        )
    };
    let outcome = w.login(&sshd, &task);
    assert!(
        outcome.success,
        "login with UsePAM yes failed: {}\n{}",
        outcome.stderr,
        diagnostics()
    );
    let records = used();
    assert_eq!(
        records.len(),
        1,
        "one real login: {records:?}\n{}",
        diagnostics()
    );
    assert_eq!(
        records[0].entry.serial.as_deref(),
        Some(task.serial.as_str())
    );
    assert_eq!(
        records[0].entry.task_id.as_deref(),
        Some(task.task_id.as_str())
    );
    assert_eq!(records[0].entry.host.as_deref(), Some(HOST_NAME));
    assert_eq!(records[0].entry.logins, vec![ALICE.to_owned()]);
    assert_eq!(records[0].entry.subject.as_deref(), Some(HOST_SUBJECT));

    // A probe: the public key and the certificate, but no private key.
    let probe_dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        probe_dir.path().join("probe.pub"),
        format!("{}\n", public_key(&w.key)),
    )
    .expect("write probe.pub");
    fs::copy(&task.cert_path, probe_dir.path().join("probe-cert.pub")).expect("copy cert");
    assert!(!probe_dir.path().join("probe").exists());
    let mark = sshd.log().len();
    let probe = ssh_probe(sshd.port(), probe_dir.path());
    let log = sshd.log()[mark..].to_owned();
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert!(!probe.status.success(), "the probe logged in");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // sshd ran the principals command for the probe's certificate and it admitted the
    // key query ("Postponed"), but no signature followed.
    assert!(
        log.contains(&format!("Postponed publickey for {ALICE}")),
        "the probe reached writ-principals: {log}\n--- ssh ---\n{stderr}"
    );
    assert!(!log.contains("Accepted publickey"), "{log}");
    assert_eq!(used().len(), 1, "a probe is not a use\n{}", diagnostics());

    // Each further real login is one more use.
    let outcome = w.login(&sshd, &task);
    assert!(outcome.success, "{}\n{}", outcome.stderr, diagnostics());
    assert_eq!(used().len(), 2, "{}", diagnostics());
}

#[test]
fn sync_watch_installs_a_revocation_the_moment_the_ca_pushes_it_and_logs_only_changes() {
    let w = world();
    let log_path = w.dir.path().join("watch.log");
    let log = fs::File::create(&log_path).expect("log file");
    // An hour between polls: only the CA's push can bring the revocation in time.
    let watch = Stop(
        Command::new(w.host.principals_bin())
            .args(["sync", "--watch", "--interval", "1h", "--config"])
            .arg(w.host.host_config_path())
            .stderr(log)
            .spawn()
            .expect("spawn sync --watch"),
    );
    let rounds = |log: &str| log.lines().filter(|l| l.contains(" synced ")).count();
    let feed = revocations_path(&w.host);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rounds(&fs::read_to_string(&log_path).expect("log")) == 0 {
        assert!(Instant::now() < deadline, "no first sync");
        thread::sleep(Duration::from_millis(20)); // poll interval
    }
    let issued = w.issue("watched");
    let quiet = fs::read_to_string(&log_path).expect("log");
    w.complete(&issued.task_id);
    // Well within one CA-side wait (25 s with the default request_timeout) and far from
    // the hour between polls: the CA answered the held request when the task ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&feed).is_ok_and(|f| f.contains(&issued.task_id)) {
        assert!(
            Instant::now() < deadline,
            "the revocation was not pushed:\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20)); // poll interval
    }
    drop(watch);
    let after = fs::read_to_string(&log_path).expect("log");
    assert!(after.contains("pushed by the CA"), "{after}");
    assert_eq!(rounds(&quiet), 1, "one line for unchanged rounds:\n{quiet}");
    assert_eq!(rounds(&after), 2, "a line when a task ended:\n{after}");
}

/// `GET /v1/revocations?after=S&wait=W`: answered at once when the lists changed after
/// `S`, held while nothing changes, answered when a task ends, with the wait granted in
/// `writ-feed-wait`; malformed push parameters are refused.
#[test]
fn a_held_feed_request_is_answered_when_a_task_ends() {
    let w = world();
    let url = format!("{}/v1/revocations?version=2", w.ca().url);
    let sequence = |response: &http::Response| {
        let signed = response.json();
        let feed: serde_json::Value =
            serde_json::from_str(signed["feed"].as_str().expect("feed")).expect("feed JSON");
        feed["sequence"].as_i64().expect("sequence")
    };
    let first = w.issue("first");
    w.complete(&first.task_id);
    // A host whose feed predates that completion is answered at once.
    let behind = http::get(&format!("{url}&after=0&wait=25"));
    assert_eq!(behind.status, 200, "{}", behind.text);
    assert!(behind.text.contains(&first.task_id));
    assert_eq!(behind.header("writ-feed-wait"), Some("25"));
    let current = sequence(&behind);

    // A host that is current waits; the next task to end answers it.
    let second = w.issue("second");
    let held_url = format!("{url}&after={current}&wait=25");
    let started = Instant::now();
    let held = thread::spawn(move || http::get(&held_url));
    // Holding means nothing new in the meantime: the issuance above is not a revocation.
    w.complete(&second.task_id);
    let answered = held.join().expect("held request");
    assert_eq!(answered.status, 200, "{}", answered.text);
    assert!(answered.text.contains(&second.task_id), "{}", answered.text);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered when the task ended, not when the 25 s wait ran out: {:?}",
        started.elapsed()
    );

    for bad in ["after=-1&wait=5", "after=3", "wait=5", "after=x&wait=5"] {
        let refused = http::get(&format!("{url}&{bad}"));
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text);
    }
}

/// `metrics_file`: each `sync` replaces the textfile-collector file with what is
/// installed, in a format a strict Prometheus parser reads; a failed round (the CA is
/// gone) says so and keeps reporting the last good files and when they were synced.
#[test]
fn sync_writes_textfile_collector_metrics_and_a_failed_round_keeps_the_installed_state() {
    let mut w = world();
    let metrics_path = w.dir.path().join("writ-principals.prom");
    w.host.write_host_config(&host_config(
        &w.ca().url,
        &w.host,
        &format!("metrics_file = \"{}\"\n", metrics_path.display()),
    ));
    let ended = w.issue("ended");
    w.complete(&ended.task_id);
    sync_ok(&w.host);
    let installed = feed_of(&read(&revocations_path(&w.host)));
    let after_success = common::metrics::parse(
        &fs::read_to_string(&metrics_path).expect("the metrics file is written"),
    );
    let value = |m: &common::metrics::Metrics, name: &str| m.value(name, &[]);
    assert_eq!(value(&after_success, "writ_principals_sync_up"), 1.0);
    assert_eq!(
        value(&after_success, "writ_principals_feed_sequence"),
        installed.sequence as f64
    );
    assert_eq!(
        value(
            &after_success,
            "writ_principals_feed_issued_timestamp_seconds"
        ),
        installed.issued_at as f64
    );
    assert_eq!(value(&after_success, "writ_principals_revoked_tasks"), 1.0);
    let trusted = fs::read_to_string(w.host.trusted_keys_path()).expect("trusted keys");
    let trusted = trusted
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert!(trusted >= 1);
    assert_eq!(
        value(&after_success, "writ_principals_trusted_ca_keys"),
        trusted as f64
    );
    assert_eq!(
        value(&after_success, "writ_principals_krl_bytes"),
        read(&krl_path(&w.host)).len() as f64
    );
    let synced_at = value(
        &after_success,
        "writ_principals_sync_last_success_timestamp_seconds",
    );
    assert!(synced_at > 0.0, "{}", after_success.text);

    w.stop_ca();
    let failed = sync(&w.host);
    assert!(!failed.status.success(), "the CA is stopped");
    let after_failure = common::metrics::parse(&fs::read_to_string(&metrics_path).expect("read"));
    assert_eq!(value(&after_failure, "writ_principals_sync_up"), 0.0);
    assert_eq!(
        value(
            &after_failure,
            "writ_principals_sync_last_success_timestamp_seconds"
        ),
        synced_at,
        "a failed round does not move the last success"
    );
    assert_eq!(value(&after_failure, "writ_principals_revoked_tasks"), 1.0);
    assert!(
        value(
            &after_failure,
            "writ_principals_sync_last_attempt_timestamp_seconds"
        ) >= synced_at
    );
    assert!(
        !fs::read_dir(w.dir.path()).expect("list").any(|e| e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .contains(".tmp")),
        "no temporary file is left behind"
    );
}

/// A long-running ssh session with `cert` (`echo up; sleep 300`), optionally with extra
/// options (a ControlMaster); returns it once the remote command runs.
fn live_session(w: &World, sshd: &Sshd, cert: &Issued, extra: &[&str]) -> Stop {
    let mut child = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(&w.key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.cert_path.display()))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(extra)
        .args(["-p", &sshd.port().to_string()])
        .arg(format!("{ALICE}@127.0.0.1"))
        .arg("echo up; sleep 300")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ssh");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read ssh stdout");
    assert_eq!(line.trim(), "up", "no session:\n{}", sshd.log());
    Stop(child)
}

/// Kills and reaps a child process on drop (also when the test panics).
struct Stop(std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Stop {
    /// Whether it ends within `limit`.
    fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.0.try_wait().expect("try_wait").is_some() {
                return true;
            }
            thread::sleep(Duration::from_millis(20)); // poll interval
        }
        false
    }
}

/// Sessions follow their task: the session hook records each connection, and the feed
/// `sync --watch` installs (pushed by the CA) ends the connections of the completed task —
/// a ControlMaster with a second, multiplexed session included — while a session of
/// another task on the same host and login stays.
#[test]
fn live_sessions_end_with_their_task_and_only_theirs() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    let (_hook, sshd, pam_log) = sessions_host(&w);
    let _watch = watching(&w);
    let doomed = w.issue("doomed");
    let kept = w.issue("kept");
    let control = w.dir.path().join("control.sock");
    let master_option = format!("ControlPath={}", control.display());
    let mut master = live_session(
        &w,
        &sshd,
        &doomed,
        &["-o", "ControlMaster=yes", "-o", &master_option],
    );
    let mut multiplexed = live_session(
        &w,
        &sshd,
        &doomed,
        &["-o", "ControlMaster=no", "-o", &master_option],
    );
    let mut other = live_session(&w, &sshd, &kept, &[]);
    let diagnostics = || {
        format!(
            "--- sshd log ---\n{}\n--- pam_exec log ---\n{}",
            sshd.log(),
            fs::read_to_string(&pam_log).unwrap_or_default()
        )
    };
    let records = fs::read_dir(w.host.state_dir().join("sessions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(records, 2, "two connections recorded\n{}", diagnostics());

    w.complete(&doomed.task_id);
    assert!(
        master.ends_within(Duration::from_secs(15)),
        "the task's connection was not ended\n{}",
        diagnostics()
    );
    assert!(
        multiplexed.ends_within(Duration::from_secs(5)),
        "the multiplexed session outlived its connection"
    );
    assert!(
        other.0.try_wait().expect("try_wait").is_none(),
        "another task's session was ended"
    );
}

/// `w`'s host with the session hook as a `required` PAM session module (fail closed) and
/// sshd with PAM; the hook's pam_exec log.
fn sessions_host(w: &World) -> (PamHook, Sshd, PathBuf) {
    pam_host(w, "required")
}

/// `w`'s host with the session hook as a PAM session module of `control` (`optional`,
/// `required`) and sshd with PAM and `ExposeAuthInfo`; the hook's pam_exec log.
fn pam_host(w: &World, control: &str) -> (PamHook, Sshd, PathBuf) {
    let pam_log = w.host.dir().join("pam_exec.log");
    let hook = PamHook::install(&format!(
        "session {control} pam_exec.so quiet log={log} {bin} session --config {config}",
        log = pam_log.display(),
        bin = w.host.principals_bin().display(),
        config = w.host.host_config_path().display(),
    ));
    let sshd = Sshd::start(
        &w.host,
        SshdOptions {
            use_pam: true,
            extra_config: "ExposeAuthInfo yes\n".to_owned(),
            ..SshdOptions::default()
        },
    );
    (hook, sshd, pam_log)
}

/// `sync --watch` for `w`'s host, polling only once an hour: only push brings news.
fn watching(w: &World) -> Stop {
    Stop(
        Command::new(w.host.principals_bin())
            .args(["sync", "--watch", "--interval", "1h", "--config"])
            .arg(w.host.host_config_path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sync --watch"),
    )
}

/// `terminate_sessions = false`: the feed still ends new logins, but open sessions stay.
#[test]
fn with_terminate_sessions_off_open_sessions_stay() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    w.host.write_host_config(&host_config(
        &w.ca().url,
        &w.host,
        "terminate_sessions = false\n",
    ));
    let (_hook, sshd, _pam_log) = sessions_host(&w);
    let task = w.issue("task");
    let mut session = live_session(&w, &sshd, &task, &[]);
    let feed = revocations_path(&w.host);
    let _watch = watching(&w);
    w.complete(&task.task_id);
    // The pushed feed is installed (new logins are refused) ...
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&feed).is_ok_and(|f| f.contains(&task.task_id)) {
        assert!(Instant::now() < deadline, "the revocation was not pushed");
        thread::sleep(Duration::from_millis(20)); // poll interval
    }
    w.assert_login_denied(&sshd, &task, "completed task");
    // ... and the open session was left alone.
    assert!(
        session.0.try_wait().expect("try_wait").is_none(),
        "a session was ended with terminate_sessions = false"
    );
}

/// Fail closed: when the hook cannot record a session (here its records' directory is a
/// file), a `required` hook refuses it with a clear reason, and nothing logs in.
#[test]
fn a_session_that_cannot_be_recorded_does_not_open() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    fs::write(w.host.state_dir().join("sessions"), b"not a directory").expect("block");
    let (_hook, sshd, pam_log) = sessions_host(&w);
    let task = w.issue("task");
    let outcome = w.login(&sshd, &task);
    let log = fs::read_to_string(&pam_log).unwrap_or_default();
    assert!(!outcome.success, "the session opened: {}", outcome.stdout);
    assert!(
        log.contains("refusing the session") && log.contains("terminate_sessions = true"),
        "{log}\n{}",
        sshd.log()
    );
}

/// A task that expires on its own ends its sessions at its expiry (the certificate says
/// when), though nothing was revoked.
#[test]
fn a_task_that_expires_ends_its_sessions_then() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let w = world();
    let (_hook, sshd, pam_log) = sessions_host(&w);
    let task = w.issue_for("short", 4);
    let expires: i64 = ssh_key::Certificate::from_openssh(&task.certificate)
        .expect("certificate")
        .extensions()
        .get(writ::profile::EXT_TASK_EXPIRES)
        .expect("task expiry extension")
        .parse()
        .expect("seconds");
    let mut session = live_session(&w, &sshd, &task, &[]);
    let _watch = watching(&w);
    assert!(
        session.ends_within(Duration::from_secs(20)),
        "the session outlived its task\n{}",
        fs::read_to_string(&pam_log).unwrap_or_default()
    );
    assert!(
        common::now() >= expires,
        "ended before the task expired ({} < {expires})",
        common::now()
    );
}

/// `on_stale = "terminate"`: once the CA is gone and the feed older than `max_staleness`,
/// `sync --watch` ends every recorded session; with the default (`keep`) they stay
/// (see the test above with `terminate_sessions = false` for the feed side).
#[test]
fn on_stale_terminate_ends_sessions_once_the_feed_is_stale() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut w = world();
    w.host.write_host_config(&host_config(
        &w.ca().url,
        &w.host,
        "on_stale = \"terminate\"\nmax_staleness = \"4s\"\n",
    ));
    let (_hook, sshd, _pam_log) = sessions_host(&w);
    // Failed rounds are retried every second; good ones are pushed (at most 2 s apart
    // with this max_staleness, so the feed stays fresh while the CA is up).
    let _watch = Stop(
        Command::new(w.host.principals_bin())
            .args(["sync", "--watch", "--interval", "1s", "--config"])
            .arg(w.host.host_config_path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sync --watch"),
    );
    let task = w.issue("task");
    let mut session = live_session(&w, &sshd, &task, &[]);
    w.stop_ca();
    assert!(
        session.ends_within(Duration::from_secs(30)),
        "the session outlived a stale feed"
    );
}

/// Online mode: the CA's audit log gets `cert.session_ended` (reason, task, serial) for
/// each session a host ended with its task.
#[test]
fn in_online_mode_the_ca_records_each_session_a_host_ended() {
    let _serial = PAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let w = online_world("2s");
    let (_hook, sshd, pam_log) = sessions_host(&w);
    let _watch = watching(&w);
    let task = w.issue("task");
    let mut session = live_session(&w, &sshd, &task, &[]);
    w.complete(&task.task_id);
    assert!(
        session.ends_within(Duration::from_secs(20)),
        "the session outlived its task\n{}",
        fs::read_to_string(&pam_log).unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let ended = loop {
        let ended = w.ca().audit_events(event::CERT_SESSION_ENDED);
        if !ended.is_empty() {
            break ended;
        }
        assert!(Instant::now() < deadline, "no cert.session_ended record");
        thread::sleep(Duration::from_millis(20)); // poll interval
    };
    assert_eq!(ended.len(), 1);
    assert_eq!(
        ended[0].entry.task_id.as_deref(),
        Some(task.task_id.as_str())
    );
    assert_eq!(ended[0].entry.serial.as_deref(), Some(task.serial.as_str()));
    assert_eq!(ended[0].entry.reason.as_deref(), Some("task_ended"));
}

/// `writ admin task revoke ID --reason R [--wait-acks D] [--json]` on the world's CA.
fn writ_admin_revoke(w: &World, task_id: &str, wait: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["admin", "--config"])
        .arg(w.ca().dir().join("writ.toml"))
        .args(["task", "revoke", task_id, "--reason", "incident 7"])
        .args(["--wait-acks", wait, "--json"])
        .output()
        .expect("run writ admin task revoke");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

/// Hosts with a token tell the CA each feed they apply (`POST /v1/revocations/applied`);
/// `writ admin task revoke` waits for them and names those that have the revocation in
/// force and those that do not yet. A report for a host name the identity may not speak
/// for is refused and recorded.
#[test]
fn admin_revoke_says_which_hosts_have_the_revocation_in_force() {
    let w = online_world("5s");
    let feeds = || {
        runtime()
            .block_on(w.ca().state.store.feeds_applied())
            .expect("feeds applied")
    };
    assert!(feeds().is_empty(), "nothing reported before the host syncs");
    let watch = watching(&w);
    // Readiness: the host's first round reports the feed it installed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while feeds().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the host never reported its feed"
        );
        thread::sleep(Duration::from_millis(20)); // poll interval
    }
    let reported = feeds();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].host, HOST_NAME);
    assert_eq!(reported[0].subject, HOST_SUBJECT);

    let issued = w.issue("acknowledged");
    let report = writ_admin_revoke(&w, &issued.task_id, "20s");
    let acks = &report["acknowledgements"];
    assert_eq!(report["state"], "revoked", "{report}");
    assert_eq!(acks["reporting"], 1, "{report}");
    assert_eq!(acks["acknowledged"], json!([HOST_NAME]), "{report}");
    assert_eq!(acks["pending"], json!([]), "{report}");
    assert!(acks["waited_seconds"].as_f64().expect("seconds") < 20.0);
    // The host acknowledged because it had installed the feed that lists the task.
    assert!(
        fs::read_to_string(revocations_path(&w.host)).is_ok_and(|f| f.contains(&issued.task_id))
    );

    // A host that no longer syncs does not acknowledge: named as pending.
    drop(watch);
    let unwatched = w.issue("unwatched");
    let report = writ_admin_revoke(&w, &unwatched.task_id, "1s");
    let acks = &report["acknowledgements"];
    assert_eq!(acks["acknowledged"], json!([]), "{report}");
    assert_eq!(acks["pending"], json!([HOST_NAME]), "{report}");

    // Speaking for another host's name is refused, recorded, and changes nothing.
    let token = fs::read_to_string(w.host.dir().join("host-token")).expect("token");
    let refused = http::post(
        &format!("{}/v1/revocations/applied", w.ca().url),
        Some(token.trim()),
        &json!({"host": "db-1.corp.example.org", "sequence": 1_000_000}),
    );
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.json()["error"]["code"], "host_not_authorized");
    let denied = w.ca().audit_events(event::HOST_FEED_DENIED);
    assert_eq!(denied.len(), 1);
    assert_eq!(
        denied[0].entry.host.as_deref(),
        Some("db-1.corp.example.org")
    );
    assert_eq!(feeds().len(), 1);
}

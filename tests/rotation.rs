//! CA key rotation end to end (SPEC §5), through real OpenSSH and the real `writ` and
//! `writ-principals` binaries:
//! - agents log in continuously through sshd while the running CA rotates twice on its
//!   schedule, and not one login fails;
//! - a certificate of a retired key is refused once it retired, by `writ-principals` even
//!   where sshd still trusts the key;
//! - an emergency revoke makes every certificate of the key fail at the next sync, and
//!   `ssh-keygen -Q` on the synced KRL agrees;
//! - `rotate` refuses a next key hosts cannot know yet (unless `--force`); `writ admin`
//!   changes reach the running server without a restart;
//! - no file or row holds an unencrypted private key, `rewrap` changes the passphrase
//!   under a running server, and a wrong passphrase stops `writ serve` with a clear error;
//! - ECDSA P-256 CA keys work with sshd.
//!
//! No sleeps as synchronisation: every wait polls a condition with a deadline.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use writ::audit::event;
use writ::authority::rotation::{self, Actor};

use common::ca::{TestCa, certificate_request};
use common::http;
use common::idp::{Key, TestIdp};
use common::sshd::{Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd, ssh_login};
use common::{now, public_key, runtime, ssh_keygen};

const ALICE: &str = "writ_alice";
const HOST_NAME: &str = "web-01.prod.example.com";
const POLL: Duration = Duration::from_millis(50);
/// Base64 of `openssh-key-v1\0` followed by the cipher name `none`: how every unencrypted
/// OpenSSH private key starts.
const CLEARTEXT_KEY_PREFIX: &str = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU";

fn policy() -> String {
    format!("name = \"agents\"\nlogins = [\"{ALICE}\"]\nhosts = [\"*.prod.example.com\"]\n")
}

/// Poll `condition` every 50 ms until it holds; panic with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// `writ --config <the CA's config> admin ca ARGS…`
fn admin(ca: &TestCa, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("--config")
        .arg(ca.dir().join("writ.toml"))
        .args(["admin", "ca"])
        .args(args)
        .env_remove("WRIT_CA_PASSPHRASE")
        .output()
        .expect("run writ admin ca")
}

fn admin_ok(ca: &TestCa, args: &[&str]) -> String {
    let out = admin(ca, args);
    assert!(
        out.status.success(),
        "writ admin ca {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `writ admin ca list --json`
fn key_list(ca: &TestCa) -> Value {
    serde_json::from_str(&admin_ok(ca, &["list", "--json"])).expect("list JSON")
}

/// Fingerprint of the key in `state` according to `writ admin ca list`.
fn key_in(list: &Value, state: &str) -> Option<(String, String)> {
    list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["state"] == state)
        .map(|k| {
            (
                k["id"].as_str().expect("id").to_owned(),
                k["fingerprint"].as_str().expect("fingerprint").to_owned(),
            )
        })
}

/// The fingerprint the running server signs with (`/readyz`).
fn serving_fingerprint(ca: &TestCa) -> String {
    let ready = http::get(&format!("{}/readyz", ca.url));
    assert_eq!(ready.status, 200, "{}", ready.text);
    ready.json()["ca_fingerprint"]
        .as_str()
        .expect("ca_fingerprint")
        .to_owned()
}

/// Fingerprints in the running server's trust bundle.
fn bundle(ca: &TestCa) -> Vec<String> {
    http::get(&format!("{}/v1/ca/trusted-keys", ca.url))
        .text
        .lines()
        .map(|l| {
            ssh_key::PublicKey::from_openssh(l)
                .expect("bundle key")
                .fingerprint(Default::default())
                .to_string()
        })
        .collect()
}

fn host_config(ca: &TestCa, state_dir: &Path) -> String {
    format!(
        "ca_url = \"{url}\"\nhost_name = \"{HOST_NAME}\"\nstate_dir = \"{state}\"\n",
        url = ca.url,
        state = state_dir.display()
    )
}

fn sync(host: &TestHost) {
    let out = Command::new(host.principals_bin())
        .args(["sync", "--config"])
        .arg(host.host_config_path())
        .output()
        .expect("run writ-principals sync");
    assert!(
        out.status.success(),
        "sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host whose sshd uses the synced trust bundle and KRL, like a production host.
fn synced_host(ca: &TestCa) -> (TestHost, Sshd) {
    let host = TestHost::new(common::writ_principals());
    host.write_host_config(&host_config(ca, &host.state_dir()));
    sync(&host);
    let sshd = Sshd::start(
        &host,
        SshdOptions {
            revoked_keys: Some(host.state_dir().join("revoked.krl")),
            ..SshdOptions::default()
        },
    );
    (host, sshd)
}

/// An issued certificate, written to `<dir>/<name>-cert.pub`.
struct Issued {
    path: PathBuf,
    text: String,
    ca_fingerprint: String,
}

fn issue(ca: &TestCa, idp: &TestIdp, key: &Path, name: &str) -> Issued {
    let response = ca.request_certificate(
        Some(&idp.token(Key::Ed25519, "agent-1")),
        &certificate_request(
            &public_key(key),
            &[ALICE],
            &["web-*.prod.example.com"],
            None,
        ),
    );
    assert_eq!(response.status, 201, "{}", response.text);
    let body = response.json();
    let text = body["certificate"]
        .as_str()
        .expect("certificate")
        .to_owned();
    let path = key.parent().expect("dir").join(format!("{name}-cert.pub"));
    std::fs::write(&path, &text).expect("write cert");
    Issued {
        path,
        text,
        ca_fingerprint: body["ca_fingerprint"].as_str().expect("fp").to_owned(),
    }
}

/// `writ-principals check` for `cert` as sshd would run it: (exit ok, stderr).
fn check(host: &TestHost, cert: &Issued) -> (bool, String) {
    let blob = cert.text.split_whitespace().nth(1).expect("blob");
    let out = Command::new(host.principals_bin())
        .args(["check", "--config"])
        .arg(host.host_config_path())
        .args(["--", ALICE, blob])
        .stdin(Stdio::null())
        .output()
        .expect("run writ-principals check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ssh-keygen -Q`: does the KRL at `krl` revoke `cert`?
fn krl_revokes(krl: &Path, cert: &Issued) -> bool {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(&cert.path)
        .output()
        .expect("ssh-keygen -Q");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "ssh-keygen -Q failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.contains("REVOKED")
}

fn login(sshd: &Sshd, key: &Path, cert: &Issued) -> bool {
    ssh_login(sshd.port(), ALICE, key, Some(&cert.path)).success
}

#[test]
fn logins_never_fail_while_the_ca_rotates_on_schedule() {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Ed25519]);
    // Hosts sync every 200 ms here, the server reloads every 2 s: 3 s of publication is
    // enough for every host to trust a next key before it signs.
    let ca = TestCa::with_policy(
        &idp,
        "rotation_min_publish = \"3s\"\ndefault_cert_ttl = \"1m\"\nmax_cert_ttl = \"1m\"",
        &policy(),
    );
    let (host, sshd) = synced_host(&ca);
    let first = serving_fingerprint(&ca);
    let initial = key_list(&ca);
    assert!(key_in(&initial, "active").is_some() && key_in(&initial, "next").is_some());

    // The schedule is set with the admin CLI on the store the running server uses.
    let scheduled = admin_ok(&ca, &["schedule", "--every", "4s"]);
    assert!(scheduled.contains("every 4s"), "{scheduled}");

    let stop = Arc::new(AtomicBool::new(false));
    // The host syncs on its own, as `writ-principals sync --watch` or a timer would.
    let syncer = {
        let stop = Arc::clone(&stop);
        let config = host.host_config_path();
        let bin = host.principals_bin();
        thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = Command::new(&bin)
                    .args(["sync", "--config"])
                    .arg(&config)
                    .output()
                    .expect("sync");
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                thread::sleep(Duration::from_millis(200));
            }
            failures
        })
    };

    // Two agents log in continuously, each with a fresh certificate every round and
    // again with the certificate of its previous round (signed by the key that signed
    // before a rotation, if one happened in between).
    let logins = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let signers: Arc<Mutex<Vec<String>>> = Arc::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(ca);
    let idp = Arc::new(idp);
    let sshd = Arc::new(sshd);
    let agents: Vec<_> = (0..2)
        .map(|n| {
            let (stop, logins, failures, signers) = (
                Arc::clone(&stop),
                Arc::clone(&logins),
                Arc::clone(&failures),
                Arc::clone(&signers),
            );
            let (ca, idp, sshd) = (Arc::clone(&ca), Arc::clone(&idp), Arc::clone(&sshd));
            let key = ssh_keygen(dir.path(), &format!("agent{n}"), &["-t", "ed25519"]);
            thread::spawn(move || {
                let mut previous: Option<Issued> = None;
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let cert = issue(&ca, &idp, &key, &format!("agent{n}-{}", round % 2));
                    {
                        let mut seen = signers.lock().expect("signers");
                        if !seen.contains(&cert.ca_fingerprint) {
                            seen.push(cert.ca_fingerprint.clone());
                        }
                    }
                    let mut attempts = vec![(&cert, "fresh")];
                    if let Some(old) = &previous {
                        attempts.push((old, "previous"));
                    }
                    for (c, which) in attempts {
                        let outcome = ssh_login(sshd.port(), ALICE, &key, Some(&c.path));
                        logins.fetch_add(1, Ordering::Relaxed);
                        if !outcome.success {
                            failures.lock().expect("failures").push(format!(
                                "agent{n} round {round}: {which} certificate signed by {}: {}",
                                c.ca_fingerprint, outcome.stderr
                            ));
                        }
                    }
                    previous = Some(cert);
                }
            })
        })
        .collect();

    // Two scheduled rotations, performed by the running server.
    wait_for("two scheduled rotations", Duration::from_secs(90), || {
        let rotated = ca
            .audit_events(event::CA_KEY_ROTATED)
            .into_iter()
            .filter(|r| r.entry.subject.as_deref() == Some("scheduler"))
            .filter(|r| r.entry.outcome == Some(writ::audit::Outcome::Success))
            .count();
        rotated >= 2 && signers.lock().expect("signers").len() >= 3
    });
    // A few more rounds on the newest key.
    let after = logins.load(Ordering::Relaxed);
    wait_for(
        "more logins after the rotations",
        Duration::from_secs(60),
        || logins.load(Ordering::Relaxed) >= after + 6,
    );
    stop.store(true, Ordering::Relaxed);
    for agent in agents {
        agent.join().expect("agent thread");
    }
    let sync_failures = syncer.join().expect("sync thread");

    let failures = failures.lock().expect("failures");
    let total = logins.load(Ordering::Relaxed);
    eprintln!(
        "{total} logins through sshd, {} failed, certificates from {} CA keys",
        failures.len(),
        signers.lock().expect("signers").len()
    );
    assert!(total >= 12, "only {total} logins");
    assert!(
        failures.is_empty(),
        "{} of {total} logins failed during rotation:\n{}\nsshd log:\n{}",
        failures.len(),
        failures.join("\n"),
        sshd.log()
    );
    assert!(sync_failures.is_empty(), "sync failed: {sync_failures:?}");
    let signers = signers.lock().expect("signers");
    assert_eq!(
        signers[0], first,
        "the first certificates came from the first key"
    );
    assert!(
        signers.len() >= 3,
        "certificates from three keys: {signers:?}"
    );

    // The keyring after two rotations: two retiring keys (certificates still valid),
    // one active, one next; all four trusted. The schedule is stopped first, and the
    // server's bundle compared once its keyring reload caught up with the store (a
    // rotation between the two reads made them differ).
    let stopped = admin_ok(&ca, &["schedule", "--off"]);
    assert!(!stopped.contains("every 4s"), "{stopped}");
    wait_for(
        "the served bundle matches the keyring",
        Duration::from_secs(30),
        || {
            let keys = key_list(&ca)["keys"].as_array().map_or(0, Vec::len);
            bundle(&ca).len() == keys
        },
    );
    let list = key_list(&ca);
    let states: Vec<&str> = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["state"].as_str().expect("state"))
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "active").count(),
        1,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| **s == "next").count(),
        1,
        "{states:?}"
    );
    assert!(
        states.iter().filter(|s| **s == "retiring").count() >= 2,
        "{states:?}"
    );
    assert_eq!(bundle(&ca).len(), states.len());
}

#[test]
fn retired_and_revoked_keys_are_refused_at_the_next_sync() {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "rotation_min_publish = \"1s\"", &policy());
    let (host, sshd) = synced_host(&ca);
    // A second host whose sshd keeps trusting every CA key it was ever given (a stale
    // TrustedUserCAKeys file), while its writ-principals syncs: writ-principals must
    // still refuse what the CA no longer trusts.
    let stale = TestHost::new(common::writ_principals());
    let stale_synced = stale.dir().join("synced");
    stale.write_host_config(&host_config(&ca, &stale_synced));
    sync(&stale);
    let stale_sshd = Sshd::start(&stale, SshdOptions::default());
    let mut ever_trusted: Vec<String> = Vec::new();
    let mut trust_all_ever = |stale: &TestHost| {
        let text = http::get(&format!("{}/v1/ca/trusted-keys", ca.url)).text;
        for line in text.lines() {
            if !ever_trusted.iter().any(|l| l == line) {
                ever_trusted.push(line.to_owned());
            }
        }
        stale.write_trusted_keys(&(ever_trusted.join("\n") + "\n"));
    };
    trust_all_ever(&stale);

    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let k1_cert = issue(&ca, &idp, &key, "k1");
    assert!(login(&sshd, &key, &k1_cert));

    // Rotate with the admin CLI (once the next key is 1 s old) and wait for the running
    // server to sign with the new key.
    let before = key_list(&ca);
    let (k1, k1_fp) = key_in(&before, "active").expect("active");
    let (k2, k2_fp) = key_in(&before, "next").expect("next");
    let allowed = before["rotate_allowed_at"]
        .as_i64()
        .expect("rotate_allowed_at");
    wait_for(
        "the next key to be published for 1s",
        Duration::from_secs(20),
        || now() >= allowed,
    );
    admin_ok(&ca, &["rotate"]);
    wait_for(
        "the server to sign with the rotated key",
        Duration::from_secs(10),
        || serving_fingerprint(&ca) == k2_fp,
    );
    sync(&host);
    sync(&stale);
    trust_all_ever(&stale);
    assert!(
        login(&sshd, &key, &k1_cert),
        "a retiring key's certificate still logs in"
    );
    let k2_cert = issue(&ca, &idp, &key, "k2");
    assert_eq!(k2_cert.ca_fingerprint, k2_fp);
    assert!(login(&sshd, &key, &k2_cert));
    assert!(login(&stale_sshd, &key, &k1_cert));

    // Retire k1 deterministically: its maintenance step, run with a clock one hour ahead
    // (when every certificate it signed has expired).
    let settings = *ca.state.keyring.settings();
    let retired = runtime()
        .block_on(rotation::retire_expired(
            ca.state.store.as_ref(),
            &settings,
            now() + 3600,
            &Actor::scheduler(),
        ))
        .expect("retire");
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].id, k1);
    assert_eq!(ca.audit_events(event::CA_KEY_RETIRED).len(), 1);
    wait_for(
        "k1 to leave the trust bundle",
        Duration::from_secs(10),
        || !bundle(&ca).contains(&k1_fp),
    );
    sync(&host);
    sync(&stale);
    // k1_cert is still inside its validity window, but its key retired.
    assert!(
        !login(&sshd, &key, &k1_cert),
        "a retired key's certificate logged in"
    );
    let (admitted, why) = check(&host, &k1_cert);
    assert!(!admitted && why.contains("untrusted"), "{why}");
    assert!(
        !login(&stale_sshd, &key, &k1_cert),
        "writ-principals admitted a retired key's certificate sshd still trusts"
    );
    assert!(
        login(&sshd, &key, &k2_cert),
        "control: the active key's certificate"
    );
    assert!(
        login(&stale_sshd, &key, &k2_cert),
        "control on the stale host"
    );

    // Emergency: revoke the active key k2. The next key k3 signs at once; k2's
    // certificates fail at the next sync, in sshd's KRL and in writ-principals.
    let (k3, k3_fp) = key_in(&key_list(&ca), "next").expect("next");
    let revoked = admin_ok(
        &ca,
        &["revoke", &k2, "--reason", "test: key compromised", "--json"],
    );
    let revoked: Value = serde_json::from_str(&revoked).expect("revoke JSON");
    assert_eq!(revoked["was"], "active");
    assert_eq!(revoked["activated"]["id"], k3.as_str());
    wait_for(
        "the server to sign with k3",
        Duration::from_secs(10),
        || serving_fingerprint(&ca) == k3_fp && !bundle(&ca).contains(&k2_fp),
    );
    let k2_revocations = ca.audit_events(event::CA_KEY_REVOKED);
    assert_eq!(k2_revocations.len(), 1);
    assert_eq!(
        k2_revocations[0].entry.ca_fingerprint.as_deref(),
        Some(k2_fp.as_str())
    );
    sync(&host);
    sync(&stale);
    let krl = host.state_dir().join("revoked.krl");
    assert!(
        krl_revokes(&krl, &k2_cert),
        "ssh-keygen -Q: k2's certificate is revoked"
    );
    assert!(
        !login(&sshd, &key, &k2_cert),
        "a revoked key's certificate logged in"
    );
    let (admitted, why) = check(&host, &k2_cert);
    assert!(!admitted && why.contains("untrusted"), "{why}");
    assert!(!login(&stale_sshd, &key, &k2_cert));
    // Honest agents are not interrupted: the new active key was published already.
    let k3_cert = issue(&ca, &idp, &key, "k3");
    assert_eq!(k3_cert.ca_fingerprint, k3_fp);
    assert!(!krl_revokes(&krl, &k3_cert));
    assert!(login(&sshd, &key, &k3_cert), "{}", sshd.log());

    // The revoked key can never sign again: its private half is gone from the store.
    let rows = runtime().block_on(ca.state.store.ca_keys()).expect("keys");
    for row in rows.iter().filter(|r| r.id == k1 || r.id == k2) {
        assert!(
            row.private_key.is_empty(),
            "{} kept its private key",
            row.id
        );
    }
}

/// A caching proxy in front of the CA that kept the trust bundle and the KRL from an
/// earlier moment: it answers those two paths (whatever the query) with the bodies it
/// kept, and relays everything else (the revocation feed) to the CA. Stops on drop.
struct StaleCache {
    url: String,
    addr: std::net::SocketAddr,
    feed_requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StaleCache {
    fn start(ca_url: &str, bundle: Vec<u8>, krl: Vec<u8>) -> StaleCache {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind cache");
        let addr = listener.local_addr().expect("addr");
        let feed_requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ca_url, feed_requests, stop) = (
                ca_url.to_owned(),
                Arc::clone(&feed_requests),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let mut reader = BufReader::new(stream);
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).is_err() {
                        continue;
                    }
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
                    let (content_type, body) = match target.split('?').next() {
                        Some("/v1/ca/trusted-keys") => {
                            ("text/plain; charset=utf-8", bundle.clone())
                        }
                        Some("/v1/krl") => ("application/octet-stream", krl.clone()),
                        _ => {
                            feed_requests.fetch_add(1, Ordering::SeqCst);
                            let mut response = ureq::get(&format!("{ca_url}{target}"))
                                .call()
                                .expect("relay to the CA");
                            let body = response.body_mut().read_to_vec().expect("relay body");
                            ("application/json", body)
                        }
                    };
                    let mut stream = reader.into_inner();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                }
            })
        };
        StaleCache {
            url: format!("http://{addr}"),
            addr,
            feed_requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StaleCache {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_stale_cache_cannot_re_trust_a_revoked_ca_key() {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "", &policy());
    let (host, sshd) = synced_host(&ca);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let k1_cert = issue(&ca, &idp, &key, "k1");
    assert!(
        login(&sshd, &key, &k1_cert),
        "control: the active key's certificate"
    );

    // What a cache in front of the CA keeps: the bundle (k1 active, k2 next) and the KRL
    // of before the revocation.
    let get = |path: &str| {
        ureq::get(&format!("{}{path}", ca.url))
            .call()
            .expect("GET")
            .body_mut()
            .read_to_vec()
            .expect("body")
    };
    let (stale_bundle, stale_krl) = (get("/v1/ca/trusted-keys"), get("/v1/krl"));

    // Emergency: revoke k1. k2 signs from now on (and so signs the feed).
    let (k1, k1_fp) = key_in(&key_list(&ca), "active").expect("active");
    let (_, k2_fp) = key_in(&key_list(&ca), "next").expect("next");
    admin_ok(&ca, &["revoke", &k1, "--reason", "test: key compromised"]);
    wait_for(
        "the server to sign with k2 and drop k1",
        Duration::from_secs(10),
        || serving_fingerprint(&ca) == k2_fp && !bundle(&ca).contains(&k1_fp),
    );
    sync(&host);
    assert!(!login(&sshd, &key, &k1_cert), "revoked, synced");
    let (admitted, why) = check(&host, &k1_cert);
    assert!(!admitted && why.contains("untrusted"), "{why}");
    let files = ["trusted_user_ca_keys", "revoked.krl", "revocations.json"];
    let read_state = || {
        files
            .iter()
            .map(|f| std::fs::read(host.state_dir().join(f)).expect("state file"))
            .collect::<Vec<_>>()
    };
    let installed = read_state();

    // The host now syncs through the cache: the old bundle and KRL next to the CA's
    // current, validly signed feed.
    let cache = StaleCache::start(&ca.url, stale_bundle, stale_krl);
    let direct = std::fs::read_to_string(host.host_config_path()).expect("host.toml");
    host.write_host_config(&direct.replace(&ca.url, &cache.url));
    let out = Command::new(host.principals_bin())
        .args(["sync", "--config"])
        .arg(host.host_config_path())
        .output()
        .expect("run writ-principals sync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sync installed a stale bundle and KRL: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("not the one the revocation feed names"),
        "{stderr}"
    );
    assert_eq!(
        cache.feed_requests.load(Ordering::SeqCst),
        3,
        "retried (writ::host::sync::SYNC_ATTEMPTS rounds), then gave up"
    );
    assert!(read_state() == installed, "nothing was written");
    // Still refused, by writ-principals and by sshd.
    let (admitted, why) = check(&host, &k1_cert);
    assert!(!admitted && why.contains("untrusted"), "{why}");
    assert!(!login(&sshd, &key, &k1_cert), "revoked key re-trusted");
    drop(cache);

    // Control: straight from the CA, sync works and k2 certificates log in.
    host.write_host_config(&direct);
    sync(&host);
    let k2_cert = issue(&ca, &idp, &key, "k2");
    assert!(login(&sshd, &key, &k2_cert), "{}", sshd.log());
}

#[test]
fn rotate_refuses_a_next_key_hosts_cannot_know_yet() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "", &policy());
    let list = key_list(&ca);
    assert_eq!(list["rotation_min_publish_seconds"], 600);
    let (active, active_fp) = key_in(&list, "active").expect("first start creates an active key");
    let (next, next_fp) = key_in(&list, "next").expect("and a next key");
    let mut first_bundle = bundle(&ca);
    first_bundle.sort();
    let mut expected = vec![active_fp.clone(), next_fp.clone()];
    expected.sort();
    assert_eq!(
        first_bundle, expected,
        "hosts learn the next key from the start"
    );

    let refused = admin(&ca, &["rotate"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&next)
            && stderr.contains("rotation_min_publish")
            && stderr.contains("--force"),
        "{stderr}"
    );
    let failed = ca.audit_events(event::CA_KEY_ROTATED);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].entry.outcome, Some(writ::audit::Outcome::Failure));
    assert_eq!(serving_fingerprint(&ca), active_fp, "nothing changed");

    let forced = admin_ok(&ca, &["rotate", "--force"]);
    assert!(
        forced.contains("FORCED") && forced.contains(&next),
        "{forced}"
    );
    let list = key_list(&ca);
    assert_eq!(key_in(&list, "active").map(|k| k.0), Some(next.clone()));
    assert_eq!(key_in(&list, "retiring").map(|k| k.0), Some(active.clone()));
    let (new_next, new_next_fp) = key_in(&list, "next").expect("a new next key");
    // The running server picks the change up without a restart.
    wait_for(
        "the server to sign with the new key",
        Duration::from_secs(10),
        || serving_fingerprint(&ca) == next_fp,
    );
    let mut trusted = bundle(&ca);
    trusted.sort();
    let mut expected = vec![active_fp.clone(), next_fp.clone(), new_next_fp];
    expected.sort();
    assert_eq!(trusted, expected);
    let exported = admin_ok(&ca, &["export-public"]);
    assert_eq!(exported.lines().count(), 3, "{exported}");
    assert_eq!(ca.audit_events(event::CA_KEY_EXPORTED).len(), 1);
    let rotated = ca.audit_events(event::CA_KEY_ROTATED);
    let done = rotated.last().expect("rotation record");
    assert_eq!(done.entry.outcome, Some(writ::audit::Outcome::Success));
    assert_eq!(done.entry.issuer.as_deref(), Some("local-admin"));
    assert_eq!(done.entry.ca_fingerprint.as_deref(), Some(next_fp.as_str()));
    assert!(
        done.entry
            .reason
            .as_deref()
            .is_some_and(|r| r.contains(&new_next))
    );

    // Schedules are stored and shown; --off clears them.
    admin_ok(&ca, &["schedule", "--every", "30d"]);
    assert_eq!(key_list(&ca)["schedule_every_seconds"], 30 * 24 * 3600);
    admin_ok(&ca, &["schedule", "--off"]);
    assert!(key_list(&ca)["schedule_every_seconds"].is_null());
    assert_eq!(ca.audit_events(event::CA_KEY_SCHEDULED).len(), 2);

    // Unknown keys and revoking twice are clear errors.
    let unknown = admin(&ca, &["revoke", "nope", "--reason", "x"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no CA key matches"));
    admin_ok(&ca, &["revoke", &active, "--reason", "test"]);
    let again = admin(&ca, &["revoke", &active, "--reason", "test"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));
    let text = admin_ok(&ca, &["list"]);
    assert!(text.contains("revoked") && text.contains(&active), "{text}");
}

/// Every file under `dir` (recursively), checked for an unencrypted OpenSSH private key.
fn assert_no_cleartext_key(dir: &Path) -> usize {
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            scanned += assert_no_cleartext_key(&path);
            continue;
        }
        let raw = std::fs::read(&path).expect("read file");
        // Also across line breaks, as PEM wraps base64 at 70 columns.
        let text: String = String::from_utf8_lossy(&raw)
            .chars()
            .filter(|c| *c != '\n' && *c != '\r')
            .collect();
        assert!(
            !text.contains(CLEARTEXT_KEY_PREFIX),
            "cleartext private key in {}",
            path.display()
        );
        scanned += 1;
    }
    scanned
}

#[test]
fn keys_stay_encrypted_and_rewrap_changes_the_passphrase_under_a_running_server() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "", &policy());
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    issue(&ca, &idp, &key, "before");

    admin_ok(&ca, &["rotate", "--force"]);
    let new_pass = ca.dir().join("new.pass");
    std::fs::write(&new_pass, "a new passphrase\n").expect("write new passphrase");
    let out = admin_ok(
        &ca,
        &[
            "rewrap",
            "--new-passphrase-file",
            new_pass.to_str().expect("path"),
        ],
    );
    assert!(out.contains("re-encrypted"), "{out}");
    assert_eq!(ca.audit_events(event::CA_KEY_REWRAPPED).len(), 1);
    let rows = runtime().block_on(ca.state.store.ca_keys()).expect("keys");
    assert_eq!(
        rows.len(),
        5,
        "3 user keys and the 2 host keys: rewrap covers both kinds"
    );
    for row in &rows {
        let stored = ssh_key::PrivateKey::from_openssh(&row.private_key).expect("parses");
        assert!(stored.is_encrypted(), "{} stored in clear", row.id);
        assert!(
            stored.decrypt("test passphrase").is_err(),
            "old passphrase still works"
        );
        stored
            .decrypt("a new passphrase")
            .expect("new passphrase works");
    }
    // The running server still signs (it holds the active key it decrypted at start).
    issue(&ca, &idp, &key, "after-rewrap");

    // The config still names the old passphrase: admin commands that need it fail clearly.
    let stale = admin(&ca, &["rotate", "--force"]);
    assert!(!stale.status.success());
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("passphrase does not decrypt"),
        "{}",
        String::from_utf8_lossy(&stale.stderr)
    );
    // Make the new passphrase the CA's; the running server re-reads it when it must
    // decrypt the key a rotation activates.
    std::fs::write(ca.dir().join("ca.pass"), "a new passphrase\n").expect("swap passphrase");
    admin_ok(&ca, &["rotate", "--force"]);
    let active = key_in(&key_list(&ca), "active").expect("active").1;
    wait_for(
        "the server to sign with the new key",
        Duration::from_secs(10),
        || serving_fingerprint(&ca) == active,
    );
    let cert = issue(&ca, &idp, &key, "after-rotation");
    assert_eq!(cert.ca_fingerprint, active);

    // Nothing writ wrote holds a cleartext key: the database, its WAL, anything else.
    assert!(assert_no_cleartext_key(ca.dir()) >= 2);
    // The detector works: a cleartext key carries the prefix.
    let clear = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .expect("key")
        .to_openssh(ssh_key::LineEnding::LF)
        .expect("pem");
    assert!(clear.replace('\n', "").contains(CLEARTEXT_KEY_PREFIX));
}

#[test]
fn a_wrong_passphrase_stops_writ_serve_with_a_clear_error() {
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "", &policy());
    let wrong_pass = ca.dir().join("wrong.pass");
    std::fs::write(&wrong_pass, "not the passphrase\n").expect("write");
    let config = std::fs::read_to_string(ca.dir().join("writ.toml"))
        .expect("config")
        .replace(
            &ca.dir().join("ca.pass").display().to_string(),
            &wrong_pass.display().to_string(),
        );
    let config = format!("[server]\nlisten = \"127.0.0.1:0\"\n\n{config}");
    let config_path = ca.dir().join("wrong.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env_remove("WRIT_CA_PASSPHRASE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn writ serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("writ serve kept running with a wrong passphrase");
        }
        thread::sleep(POLL);
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success());
    assert!(
        stderr.contains("the CA passphrase does not decrypt CA key")
            && stderr.contains("passphrase_file"),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn ecdsa_p256_ca_keys_sign_certificates_sshd_accepts() {
    require_root_and_sshd();
    ensure_user(ALICE);
    let idp = TestIdp::start(&[Key::Ed25519]);
    let ca = TestCa::with_policy(&idp, "key_algorithm = \"ecdsa-p256\"", &policy());
    let trusted = http::get(&format!("{}/v1/ca/trusted-keys", ca.url)).text;
    assert_eq!(trusted.lines().count(), 2);
    assert!(
        trusted
            .lines()
            .all(|l| l.starts_with("ecdsa-sha2-nistp256 ")),
        "{trusted}"
    );
    // sync verifies the revocation feed's ECDSA signature against the bundle.
    let (_host, sshd) = synced_host(&ca);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let cert = issue(&ca, &idp, &key, "ecdsa");
    let shown = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert.path)
        .output()
        .expect("ssh-keygen -L");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("Signing CA: ECDSA"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    assert!(login(&sshd, &key, &cert), "{}", sshd.log());
}

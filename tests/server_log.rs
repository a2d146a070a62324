//! The CA's own log, written by the real `writ serve` binary: values that came from
//! outside (a signed token's `sub`) are escaped, so a client cannot forge log lines or
//! send terminal escape sequences to whoever reads the log; a task's `purpose` with
//! line-separator or bidirectional-formatting characters is refused.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ca::certificate_request;
use common::idp::{Key, TestIdp};
use common::{http, public_key, ssh_keygen};

const FORGED: &str = "2026-12-02T04:00:00.000000Z  INFO writ: admin granted root";

/// `writ serve` with its log in a file, stopped (and its files removed) on drop.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Server {
    fn start(idp: &TestIdp) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("ca.pass");
        std::fs::write(&pass, "test passphrase\n").expect("passphrase");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\nurl = \"sqlite://{db}\"\n\n\
             [ca]\npassphrase_file = \"{pass}\"\n\n\
             [[issuer]]\nname = \"test\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\naudiences = [\"writ\"]\n\n\
             [[policy]]\nname = \"agents\"\nissuer = \"test\"\nsubject = \"agent-*\"\n\
             logins = [\"deploy\"]\nhosts = [\"*.example.com\"]\n",
            db = dir.path().join("writ.db").display(),
            pass = pass.display(),
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        );
        let config_path = dir.path().join("writ.toml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("writ.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("WRIT_CONFIG")
            .env_remove("WRIT_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn writ serve");
        let mut server = Server {
            child,
            dir,
            url: String::new(),
        };
        // Readiness: the "listening" line names the bound address.
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.url.is_empty() {
            let log = server.log();
            if let Some(addr) = log
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                server.url = format!("http://{addr}");
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("writ serve exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "writ serve never listened:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
        server
    }

    fn log(&self) -> String {
        let mut bytes = Vec::new();
        std::fs::File::open(self.dir.path().join("writ.log"))
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .expect("read log");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_subject_cannot_forge_log_lines_or_send_escape_sequences() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    let subject = format!("agent-1\n{FORGED}\u{1b}[2J\u{2028}{FORGED}\r");
    let token = idp.token(Key::Rsa, &subject);
    let issued = http::post(
        &format!("{}/v1/certificates", server.url),
        Some(&token),
        &certificate_request(&key, &["deploy"], &["web.example.com"], None),
    );
    assert_eq!(issued.status, 201, "{}", issued.text);

    // The issuance line is logged before the response is sent.
    let log = server.log();
    let issuance = log
        .lines()
        .find(|l| l.contains("certificate issued"))
        .unwrap_or_else(|| panic!("no issuance line:\n{log}"));
    assert!(issuance.contains("agent-1"), "{issuance}");
    assert!(
        !log.lines().any(|l| l.starts_with(FORGED)),
        "a forged line reached the log:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "raw ESC in the log:\n{log:?}");
    assert!(!log.contains('\r') && !log.contains('\u{2028}'), "{log:?}");
}

#[test]
fn a_purpose_with_separators_or_bidi_controls_is_refused() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let server = Server::start(&idp);
    let dir = tempfile::tempdir().expect("tempdir");
    let key = public_key(&ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]));
    for purpose in [
        "line\u{2028}break",
        "para\u{2029}",
        "\u{202e}gol",
        "iso\u{2066}late",
    ] {
        let mut body = certificate_request(&key, &["deploy"], &["web.example.com"], None);
        body["task"]["purpose"] = purpose.into();
        let refused = http::post(
            &format!("{}/v1/certificates", server.url),
            Some(&idp.token(Key::Rsa, "agent-1")),
            &body,
        );
        assert_eq!(refused.status, 400, "{purpose:?}: {}", refused.text);
        assert_eq!(refused.error_code(), "invalid_task", "{purpose:?}");
    }
}

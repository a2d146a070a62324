//! `writ serve` over TLS, as the shipped binaries meet it, with a PKI the test makes
//! (rcgen, [`common::pki`]):
//! - an agent (`writ cert`, `writ task show`) gets a real certificate over https when it
//!   trusts the CA's issuer (`--ca-bundle`, `WRIT_CA_BUNDLE`), and refuses a CA whose
//!   certificate chains elsewhere (or only to the system's trust store);
//! - `writ-principals sync` against an https CA with `ca_bundle`, and with a wrong one;
//! - mutual TLS: with `tls_client_ca` a client without a certificate (or with one from
//!   another CA) gets no answer, one with a certificate does; without it, any client does;
//! - reload: SIGHUP (and a change of the files) serves the new certificate to new
//!   connections while an open keep-alive connection keeps answering; a reload that fails
//!   keeps the old certificate;
//! - start-up: plain HTTP on a non-loopback address is refused unless
//!   `allow_plaintext = true` (then a warning), and TLS files that are missing, lone or
//!   do not match are refused naming the key and the file.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::idp::{Key, TestIdp};
use common::pki::{Authority, Connection, Leaf, client_config};
use common::serve::Server;
use common::{ssh_keygen, writ_principals};

/// `[server]` lines serving `leaf` (written into `dir` as `server.crt`/`server.key`).
fn tls_lines(dir: &Path, leaf: &Leaf) -> String {
    let (cert, key) = leaf.write(dir, "server");
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

fn writ() -> Command {
    common::output::writ_isolated(Path::new("/nonexistent/writ-tests"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `writ cert` for `deploy` on web-01 at `url` with a fresh token, plus `extra` options.
fn cert(idp: &TestIdp, dir: &Path, url: &str, key: &Path, extra: &[&str]) -> Output {
    let token = dir.join("token");
    std::fs::write(&token, idp.token(Key::Rsa, "agent-1")).expect("token");
    writ()
        .args(["cert", "--ca-url", url, "--token"])
        .arg(format!("@{}", token.display()))
        .args(["--login", "deploy", "--host", "web-01.example.com", "--key"])
        .arg(key)
        .args(extra)
        .output()
        .expect("run writ cert")
}

#[test]
fn an_agent_gets_a_certificate_over_https_only_from_a_ca_it_trusts() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let server = Server::start(&idp, &tls_lines(dir.path(), &pki.server()));
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let bundle = pki.write(dir.path(), "ca");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);

    let issued = cert(
        &idp,
        dir.path(),
        &server.url,
        &key,
        &["--ca-bundle", &bundle.display().to_string()],
    );
    assert!(issued.status.success(), "{}", stderr(&issued));
    let certificate = std::fs::read_to_string(dir.path().join("agent-cert.pub")).expect("cert");
    assert!(
        certificate.starts_with("ssh-ed25519-cert-v01@openssh.com "),
        "{certificate}"
    );
    let task = stdout(&issued)
        .lines()
        .find_map(|l| l.strip_prefix("task "))
        .expect("task id")
        .to_owned();

    // WRIT_CA_BUNDLE does the same for `writ task show` (authenticated by the key).
    let shown = writ()
        .args(["task", "show", &task, "--ca-url", &server.url, "--key"])
        .arg(&key)
        .env("WRIT_CA_BUNDLE", &bundle)
        .output()
        .expect("writ task show");
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert!(stdout(&shown).contains("active"), "{}", stdout(&shown));

    // Another CA's certificate in the bundle: refused before any token is sent.
    let wrong = Authority::new("someone else's CA").write(dir.path(), "wrong");
    let refused = cert(
        &idp,
        dir.path(),
        &server.url,
        &key,
        &["--ca-bundle", &wrong.display().to_string()],
    );
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("not trusted"), "{message}");
    assert!(message.contains(&wrong.display().to_string()), "{message}");

    // No bundle: the system's trust store does not hold the test CA.
    let refused = cert(&idp, dir.path(), &server.url, &key, &[]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("not trusted") && message.contains("--ca-bundle"),
        "{message}"
    );

    // A bundle that is not one: named, before anything is sent.
    let refused = cert(
        &idp,
        dir.path(),
        &server.url,
        &key,
        &["--ca-bundle", &key.display().to_string()],
    );
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("--ca-bundle") && message.contains("no certificate"),
        "{message}"
    );

    // Only the first issuance reached the CA.
    assert_eq!(
        common::database_count(
            &server.dir().join("writ.db"),
            "SELECT COUNT(*) FROM audit_events WHERE event = 'cert.issued'"
        ),
        1
    );
}

/// A host configuration for `url` with state under `dir`, plus `extra` lines.
fn host_config(dir: &Path, url: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("host.toml");
    std::fs::write(
        &path,
        format!(
            "ca_url = \"{url}\"\nhost_name = \"web-01.example.com\"\nstate_dir = \"{}\"\n{extra}",
            dir.join("state").display()
        ),
    )
    .expect("host config");
    path
}

fn sync(config: &Path) -> Output {
    Command::new(writ_principals())
        .args(["sync", "--config"])
        .arg(config)
        .output()
        .expect("run writ-principals sync")
}

#[test]
fn writ_principals_syncs_from_an_https_ca_it_trusts_through_ca_bundle() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let server = Server::start(&idp, &tls_lines(dir.path(), &pki.server()));
    let bundle = pki.write(dir.path(), "ca");

    let config = host_config(
        dir.path(),
        &server.url,
        &format!("ca_bundle = \"{}\"\n", bundle.display()),
    );
    let synced = sync(&config);
    assert!(synced.status.success(), "{}", stderr(&synced));
    let keys = std::fs::read_to_string(dir.path().join("state/trusted_user_ca_keys"))
        .expect("trusted keys");
    assert!(keys.starts_with("ssh-ed25519 "), "{keys}");

    // The wrong CA: refused, naming ca_bundle; nothing installed changes.
    let wrong = Authority::new("someone else's CA").write(dir.path(), "wrong");
    let config = host_config(
        dir.path(),
        &server.url,
        &format!("ca_bundle = \"{}\"\n", wrong.display()),
    );
    let refused = sync(&config);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("not trusted") && message.contains("ca_bundle"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state/trusted_user_ca_keys")).expect("keys"),
        keys
    );

    // No ca_bundle: the system's trust store, which does not hold the test CA.
    let config = host_config(dir.path(), &server.url, "");
    let refused = sync(&config);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not trusted"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn mutual_tls_answers_only_clients_with_a_certificate_from_tls_client_ca() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let clients = Authority::new("writ test client CA");
    let client_ca = clients.write(dir.path(), "clients");
    let server = Server::start(
        &idp,
        &format!(
            "{}tls_client_ca = \"{}\"\n",
            tls_lines(dir.path(), &pki.server()),
            client_ca.display()
        ),
    );
    let host = clients.client("web-01.example.com");

    // With a certificate from the client CA: answered.
    let mut connection =
        Connection::open(server.addr(), client_config(&pki, Some(&host))).expect("handshake");
    assert_eq!(connection.get("/healthz").expect("answer").0, 200);

    // Without one, or with one from another CA: no HTTP answer at all.
    let stranger = Authority::new("elsewhere").client("web-01.example.com");
    for client in [None, Some(&stranger)] {
        let answered = Connection::open(server.addr(), client_config(&pki, client))
            .and_then(|mut c| c.get("/healthz"));
        assert!(
            answered.is_err(),
            "answered without a valid client certificate: {answered:?}"
        );
    }

    // writ-principals presents client_cert/client_key; without them it is refused.
    let (cert_file, key_file) = host.write(dir.path(), "host");
    let bundle = pki.write(dir.path(), "ca");
    let with_cert = host_config(
        dir.path(),
        &server.url,
        &format!(
            "ca_bundle = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            bundle.display(),
            cert_file.display(),
            key_file.display()
        ),
    );
    let synced = sync(&with_cert);
    assert!(synced.status.success(), "{}", stderr(&synced));
    let without = host_config(
        dir.path(),
        &server.url,
        &format!("ca_bundle = \"{}\"\n", bundle.display()),
    );
    let refused = sync(&without);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("client_cert"),
        "{}",
        stderr(&refused)
    );

    // So does the agent client (`--client-cert`, `--client-key`).
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let agent = clients.client("agent-1");
    let (agent_cert, agent_key) = agent.write(dir.path(), "agent-tls");
    let ca_bundle = bundle.display().to_string();
    let issued = cert(
        &idp,
        dir.path(),
        &server.url,
        &key,
        &[
            "--ca-bundle",
            &ca_bundle,
            "--client-cert",
            &agent_cert.display().to_string(),
            "--client-key",
            &agent_key.display().to_string(),
        ],
    );
    assert!(issued.status.success(), "{}", stderr(&issued));
    let refused = cert(
        &idp,
        dir.path(),
        &server.url,
        &key,
        &["--ca-bundle", &ca_bundle],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--client-cert"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn without_tls_client_ca_clients_need_no_certificate() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let server = Server::start(&idp, &tls_lines(dir.path(), &pki.server()));
    let mut anonymous =
        Connection::open(server.addr(), client_config(&pki, None)).expect("handshake");
    assert_eq!(anonymous.get("/healthz").expect("answer").0, 200);
    let client = Authority::new("any").client("agent-1");
    let mut presenting =
        Connection::open(server.addr(), client_config(&pki, Some(&client))).expect("handshake");
    assert_eq!(presenting.get("/healthz").expect("answer").0, 200);
}

#[test]
fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let first = pki.server();
    // The kept connection idles through a poll interval or two: no idle cut-off here.
    let mut server = Server::start(
        &idp,
        &format!("{}client_timeout = \"5m\"\n", tls_lines(dir.path(), &first)),
    );
    server.wait_for_log(&["TLS certificate loaded", &first.fingerprint()]);
    let mut kept = Connection::open(server.addr(), client_config(&pki, None)).expect("handshake");
    assert_eq!(kept.server_fingerprint(), first.fingerprint());
    assert_eq!(kept.get("/healthz").expect("answer").0, 200);

    // A renewed certificate (new key too), then SIGHUP.
    let second = pki.server();
    tls_lines(dir.path(), &second);
    server.signal("HUP");
    server.wait_for_log(&["TLS certificate reloaded", "SIGHUP", &second.fingerprint()]);
    // A new client (a client that kept its TLS session would resume it, certificate and all).
    let fresh = Connection::open(server.addr(), client_config(&pki, None)).expect("handshake");
    assert_eq!(fresh.server_fingerprint(), second.fingerprint());
    // The connection opened before the reload still answers, on its own certificate.
    assert_eq!(kept.get("/healthz").expect("answer").0, 200);
    assert_eq!(kept.server_fingerprint(), first.fingerprint());

    // A key that does not match: the reload fails and changes nothing.
    std::fs::write(dir.path().join("server.key"), pki.server().key_pem).expect("write key");
    server.signal("HUP");
    server.wait_for_log(&["TLS certificate reload failed", "does not match", "SIGHUP"]);
    let after_failure =
        Connection::open(server.addr(), client_config(&pki, None)).expect("handshake");
    assert_eq!(after_failure.server_fingerprint(), second.fingerprint());

    // A change of the files alone is picked up too (polled), no signal needed.
    let third = pki.server();
    tls_lines(dir.path(), &third);
    server.wait_for_log(&[
        "TLS certificate reloaded",
        "file change",
        &third.fingerprint(),
    ]);
    let newest = Connection::open(server.addr(), client_config(&pki, None)).expect("handshake");
    assert_eq!(newest.server_fingerprint(), third.fingerprint());
    assert_eq!(kept.get("/healthz").expect("answer").0, 200);
}

#[test]
fn plain_http_off_loopback_needs_allow_plaintext() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let (status, log) = Server::try_start(&idp, "", &["--listen", "0.0.0.0:0"])
        .err()
        .expect("refused");
    assert!(!status.success());
    assert!(
        log.contains("server.listen") && log.contains("allow_plaintext"),
        "{log}"
    );

    let mut server = Server::try_start(&idp, "allow_plaintext = true", &["--listen", "0.0.0.0:0"])
        .unwrap_or_else(|(status, log)| panic!("{status}: {log}"));
    let warning = server.wait_for_log(&["WARN", "plain HTTP on a non-loopback address"]);
    assert!(warning.contains("allow_plaintext"), "{warning}");
    assert_eq!(
        common::http::get(&format!("{}/healthz", server.url)).status,
        200
    );

    // TLS makes a non-loopback address acceptable without allow_plaintext.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let server = Server::try_start(
        &idp,
        &tls_lines(dir.path(), &pki.server()),
        &["--listen", "0.0.0.0:0"],
    )
    .unwrap_or_else(|(status, log)| panic!("{status}: {log}"));
    let mut connection = Connection::open(server.addr(), client_config(&pki, None)).expect("tls");
    assert_eq!(connection.get("/healthz").expect("answer").0, 200);
}

#[test]
fn tls_files_that_are_missing_lone_or_mismatched_are_refused_at_start() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Authority::new("writ test CA");
    let (cert, key) = pki.server().write(dir.path(), "server");
    let (_, other_key) = pki.server().write(dir.path(), "other");
    let missing = dir.path().join("missing.crt");
    let cases = [
        (
            format!("tls_cert = \"{}\"", cert.display()),
            vec!["server.tls_key".to_owned(), "tls_cert".to_owned()],
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                missing.display(),
                key.display()
            ),
            vec!["server.tls_cert".to_owned(), missing.display().to_string()],
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                cert.display(),
                other_key.display()
            ),
            vec![
                "server.tls_key".to_owned(),
                other_key.display().to_string(),
                "does not match".to_owned(),
            ],
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                key.display(),
                key.display()
            ),
            vec!["server.tls_cert".to_owned(), "no certificate".to_owned()],
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"",
                cert.display(),
                key.display(),
                key.display()
            ),
            vec!["server.tls_client_ca".to_owned(), key.display().to_string()],
        ),
        (
            format!("tls_client_ca = \"{}\"", cert.display()),
            vec!["server.tls_client_ca".to_owned(), "tls_cert".to_owned()],
        ),
    ];
    for (lines, expected) in cases {
        let (status, log) = Server::try_start(&idp, &lines, &[])
            .err()
            .unwrap_or_else(|| panic!("started with {lines}"));
        assert!(!status.success());
        for part in expected {
            assert!(
                log.contains(&part),
                "{part:?} not in the error for {lines}:\n{log}"
            );
        }
    }
}

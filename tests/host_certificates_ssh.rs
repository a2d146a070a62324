//! Host certificates end to end through real OpenSSH (issue 17): a host gets its
//! certificate with `writ-principals host-cert` (its own workload token, a `role = "host"`
//! policy), sshd serves it (`HostCertificate`), and `writ ssh` — in an empty HOME, with
//! only the CA's `@cert-authority` lines and `StrictHostKeyChecking=yes` — logs in without
//! a prompt and writes nothing to `~/.ssh`. ssh refuses a host with an uncertified key,
//! a certificate for another name, a revoked or expired certificate, or one signed by the
//! *user* CA; host-CA rotation keeps logins working; renewal follows the pinned clock.
//! Needs root and openssh-server; fails (never skips) otherwise.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::ca::TestCa;
use common::enrolled::{ALICE, EnrolledHost, HOST_NAME, ca_with, world};
use common::http;
use common::idp::{Key, TestIdp};
use common::sshd::{Sshd, require_root_and_sshd};

const HINT: &str = "did not prove itself with a host certificate from this CA";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `writ ssh` as an agent in a fresh environment: an empty HOME, no ssh agent, nothing
/// about trust in host keys — only where the host named `name` is (address and port).
fn writ_ssh(ca: &TestCa, idp: &TestIdp, name: &str, port: u16, home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_writ"))
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["ssh", "--ca-url", &ca.url, "--token"])
        .arg(idp.token(Key::Rsa, "agent-1"))
        .args([
            "--login",
            ALICE,
            "--host",
            name,
            "--purpose",
            "host certificates",
        ])
        // The test has no DNS: connect to the address, verify the name (as an operator
        // would for a host reached through an address).
        .arg("--ssh-arg=-oHostName=127.0.0.1")
        .arg(format!("--ssh-arg=-oHostKeyAlias={name}"))
        .arg(format!("--ssh-arg=-p{port}"))
        .args(["--ssh-arg=-oBatchMode=yes", "--", "echo", "hello-from-task"])
        .output()
        .expect("run writ ssh")
}

fn logged_in(out: &Output) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello-from-task")
}

/// Whether `writ ssh` to the enrolled host (by its name) logs in.
fn logs_in(ca: &TestCa, idp: &TestIdp, sshd: &Sshd, home: &Path) -> bool {
    logged_in(&writ_ssh(ca, idp, HOST_NAME, sshd.port(), home))
}

/// ssh refused the host, and `writ ssh` said what to do about it.
fn assert_refused(out: &Output, what: &str) {
    assert!(!logged_in(out), "{what} was accepted");
    assert_eq!(
        out.status.code(),
        Some(84),
        "host not trusted: {}",
        stderr(out)
    );
    assert!(stderr(out).contains(HINT), "{}", stderr(out));
}

fn read_certificate(path: &Path) -> ssh_key::Certificate {
    let text = fs::read_to_string(path).expect("certificate");
    ssh_key::Certificate::from_openssh(text.trim()).expect("parse certificate")
}

fn known_hosts(ca: &TestCa) -> String {
    let response = http::get(&format!("{}/v1/ca/known-hosts", ca.url));
    assert_eq!(response.status, 200, "{}", response.text);
    response.text
}

/// Wait (≤ 10 s) until the CA's known-hosts lines satisfy `ready` (keyring reloads are
/// periodic).
fn wait_for_known_hosts(ca: &TestCa, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = known_hosts(ca);
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "known-hosts never changed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn admin(ca: &TestCa, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .arg("admin")
        .args(args)
        .arg("--config")
        .arg(ca.dir().join("writ.toml"))
        .output()
        .expect("run writ admin");
    assert!(
        out.status.success(),
        "writ admin {args:?}: {}",
        stderr(&out)
    );
    out
}

#[test]
fn an_enrolled_host_is_verified_by_the_ca_and_writ_ssh_writes_nothing_to_home() {
    let (idp, ca, enrolled) = world("", false);
    let out = enrolled.host_cert();
    assert!(out.status.success(), "host-cert: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("written"), "{said}");
    // No sshd yet: the reload is reported, not fatal.
    assert!(said.contains("not reloaded"), "{said}");
    assert_eq!(ca.audit_events("host_cert.issued").len(), 1);

    let sshd = enrolled.start_sshd(true);
    let home = tempfile::tempdir().expect("home");
    let out = writ_ssh(&ca, &idp, HOST_NAME, sshd.port(), home.path());
    assert!(
        logged_in(&out),
        "writ ssh: {}\n{}",
        stderr(&out),
        sshd.log()
    );
    assert!(!stderr(&out).contains(HINT));
    let left: Vec<_> = fs::read_dir(home.path()).expect("home").collect();
    assert!(left.is_empty(), "writ ssh wrote to HOME: {left:?}");

    // A second round keeps the certificate (not two thirds through its life).
    enrolled.refresh_token(&idp);
    let serial = read_certificate(&enrolled.certificate_path()).serial();
    let out = enrolled.host_cert();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
    assert_eq!(
        read_certificate(&enrolled.certificate_path()).serial(),
        serial
    );
}

#[test]
fn writ_cert_writes_known_hosts_lines_plain_ssh_verifies_the_host_with() {
    let (idp, ca, enrolled) = world("", true);
    let sshd = enrolled.start_sshd(true);
    let dir = tempfile::tempdir().expect("dir");
    let key = common::ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    let lines_file = dir.path().join("known_hosts");
    let out = Command::new(env!("CARGO_BIN_EXE_writ"))
        .args(["cert", "--ca-url", &ca.url, "--token"])
        .arg(idp.token(Key::Rsa, "agent-1"))
        .args(["--login", ALICE, "--host", HOST_NAME, "--key"])
        .arg(&key)
        .arg("--known-hosts")
        .arg(&lines_file)
        .output()
        .expect("run writ cert");
    assert!(out.status.success(), "writ cert: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("known_hosts"));
    assert_eq!(
        fs::read_to_string(&lines_file).expect("lines"),
        known_hosts(&ca)
    );
    let certificate = PathBuf::from(format!("{}-cert.pub", key.display()));
    let ssh = |name: &str| {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(&key)
            .arg("-o")
            .arg(format!("CertificateFile={}", certificate.display()))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", lines_file.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "HostName=127.0.0.1",
            ])
            .arg("-o")
            .arg(format!("HostKeyAlias={name}"))
            .args([
                "-p",
                &sshd.port().to_string(),
                "-l",
                ALICE,
                name,
                "echo",
                "hello-from-task",
            ])
            .output()
            .expect("run ssh")
    };
    assert!(logged_in(&ssh(HOST_NAME)), "{}", sshd.log());
    let other = ssh("web-02.prod.example.com");
    assert!(!logged_in(&other));
    assert!(
        stderr(&other).contains("Host key verification failed"),
        "{}",
        stderr(&other)
    );
}

#[test]
fn ssh_refuses_hosts_the_ca_does_not_vouch_for() {
    let (idp, ca, enrolled) = world("", false);
    let home = tempfile::tempdir().expect("home");

    // An uncertified key: sshd serves no certificate.
    {
        let sshd = enrolled.start_sshd(false);
        let out = writ_ssh(&ca, &idp, HOST_NAME, sshd.port(), home.path());
        assert_refused(&out, "an uncertified host");
    }

    let out = enrolled.host_cert();
    assert!(out.status.success(), "host-cert: {}", stderr(&out));
    let sshd = enrolled.start_sshd(true);

    // A certificate for another name: the host is dialled as web-02.
    let out = writ_ssh(
        &ca,
        &idp,
        "web-02.prod.example.com",
        sshd.port(),
        home.path(),
    );
    assert!(
        !logged_in(&out),
        "a certificate for another name was accepted"
    );
    assert!(stderr(&out).contains(HINT), "{}", stderr(&out));

    // The right name works…
    assert!(logs_in(&ca, &idp, &sshd, home.path()));

    // …until the certificate is revoked: ssh reads the CA's KRL.
    let serial = read_certificate(&enrolled.certificate_path())
        .serial()
        .to_string();
    admin(&ca, &["host-cert", "revoke", &serial]);
    let out = writ_ssh(&ca, &idp, HOST_NAME, sshd.port(), home.path());
    assert_refused(&out, "a revoked host certificate");
    assert!(fs::read_dir(home.path()).expect("home").next().is_none());
}

#[test]
fn a_host_certificate_signed_by_the_user_ca_is_refused() {
    let (idp, ca, enrolled) = world("", false);
    // The user CA's key is not among the host CA keys…
    let user_keys = http::get(&format!("{}/v1/ca/trusted-keys", ca.url)).text;
    let lines = known_hosts(&ca);
    for key in user_keys
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let blob = key.split_whitespace().nth(1).expect("key blob");
        assert!(!lines.contains(blob), "a user CA key is trusted for hosts");
    }
    // …so a host certificate it signs (made here with the CA's own user signing key) is
    // refused by ssh.
    let host_key =
        fs::read_to_string(enrolled.host.dir().join("ssh_host_ed25519_key.pub")).expect("host key");
    let host_key = ssh_key::PublicKey::from_openssh(host_key.trim()).expect("host key");
    let signer = ca.state.keyring.current().signer();
    let spec = writ::authority::certificate::HostCertificateSpec {
        public_key: host_key,
        serial: 7,
        key_id: "forged-by-the-user-ca".into(),
        names: vec![HOST_NAME.to_owned()],
        valid_after: common::now() as u64 - 60,
        valid_before: common::now() as u64 + 3600,
    };
    let cert = writ::authority::certificate::sign_host_certificate(
        &spec,
        signer.as_ref(),
        &mut rand_core::OsRng,
    )
    .expect("sign");
    fs::write(
        enrolled.certificate_path(),
        format!("{}\n", cert.to_openssh().expect("encode")),
    )
    .expect("write certificate");
    let sshd = enrolled.start_sshd(true);
    let home = tempfile::tempdir().expect("home");
    let out = writ_ssh(&ca, &idp, HOST_NAME, sshd.port(), home.path());
    assert!(
        !logged_in(&out),
        "a host certificate from the user CA was accepted"
    );
    assert!(stderr(&out).contains(HINT), "{}", stderr(&out));
}

#[test]
fn an_expired_host_certificate_is_refused() {
    // The shortest lifetime the CA allows, so expiry comes quickly.
    let (idp, ca, enrolled) = world("host_cert_ttl = \"1m\"\nclock_skew = \"0s\"", true);
    let cert = read_certificate(&enrolled.certificate_path());
    let sshd = enrolled.start_sshd(true);
    let home = tempfile::tempdir().expect("home");
    assert!(logs_in(&ca, &idp, &sshd, home.path()));
    // Expiry is a property of time: wait for the clock to pass valid_before.
    while (common::now() as u64) <= cert.valid_before() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = writ_ssh(&ca, &idp, HOST_NAME, sshd.port(), home.path());
    assert_refused(&out, "an expired host certificate");
}

#[test]
fn a_name_the_host_policy_does_not_cover_is_refused_and_audited() {
    require_root_and_sshd();
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = ca_with(&idp, "");
    let enrolled = EnrolledHost::new(&ca, &idp, &["db-01.staging.example.com"]);
    let out = enrolled.host_cert();
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("403"), "{said}");
    assert!(said.contains("nothing written"), "{said}");
    assert!(!enrolled.certificate_path().exists());
    let denied = ca.audit_events("host_cert.denied");
    assert_eq!(denied.len(), 1, "{denied:?}");
}

#[test]
fn host_ca_rotation_keeps_logins_working_and_renewal_follows_the_clock() {
    let (idp, ca, enrolled) = world("", true);
    let first = read_certificate(&enrolled.certificate_path());
    let sshd = enrolled.start_sshd(true);
    let home = tempfile::tempdir().expect("home");
    assert!(logs_in(&ca, &idp, &sshd, home.path()));

    // Rotate the host CA: the old key retires but stays trusted, next to the new one.
    let before = known_hosts(&ca);
    admin(&ca, &["ca", "rotate", "--kind", "host", "--force"]);
    let after = wait_for_known_hosts(&ca, |text| {
        text.lines()
            .filter(|l| l.starts_with("@cert-authority"))
            .count()
            > before
                .lines()
                .filter(|l| l.starts_with("@cert-authority"))
                .count()
    });
    let old_ca = first.signature_key().clone();
    let old_blob = ssh_key::PublicKey::from(old_ca).to_openssh().expect("key");
    let old_blob = old_blob.split_whitespace().nth(1).expect("blob").to_owned();
    assert!(
        after.contains(&old_blob),
        "the old host CA key left trust:\n{after}"
    );
    // The old certificate still verifies.
    assert!(logs_in(&ca, &idp, &sshd, home.path()));

    // Renewal with a pinned clock: kept just before two thirds, renewed at two thirds.
    let config =
        writ::host::config::HostConfig::load(&enrolled.host.host_config_path()).expect("config");
    let renew_at = writ::host::host_cert::renew_at(first.valid_after(), first.valid_before());
    let kept = writ::host::host_cert::run_at(&config, renew_at - 1).expect("round");
    assert!(!kept.changed(), "{kept:?}");
    let renewed = writ::host::host_cert::run_at(&config, renew_at).expect("round");
    assert!(renewed.changed(), "{renewed:?}");
    assert!(
        matches!(renewed.reload, Some(writ::host::host_cert::Reload::Done(_))),
        "{:?}",
        renewed.reload
    );
    let second = read_certificate(&enrolled.certificate_path());
    assert_ne!(second.serial(), first.serial());
    assert_ne!(
        second.signature_key(),
        first.signature_key(),
        "the renewed certificate is signed by the new host CA key"
    );
    // sshd took the SIGHUP: wait until it listens again, then log in with the new one.
    wait_for_reload(&sshd);
    assert!(logs_in(&ca, &idp, &sshd, home.path()));
}

/// Wait (≤ 10 s) until sshd has restarted after a SIGHUP and listens again.
fn wait_for_reload(sshd: &Sshd) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = sshd.log();
        if let Some(at) = log.find("Received SIGHUP")
            && log[at..].contains("Server listening on 127.0.0.1")
        {
            return;
        }
        assert!(Instant::now() < deadline, "sshd did not reload:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

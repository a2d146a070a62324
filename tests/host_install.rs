//! `contrib/host/install.sh` against a real sshd (README "Setting up a host"): the
//! installer is one transaction. It installs into a scratch root (`ROOT=`) under a
//! root-owned test host directory, and the test sshd's config `Include`s the scratch
//! root's drop-in directory at its top, as Debian's sshd_config does.
//!
//! - With an unreachable CA it exits non-zero, leaves the scratch root exactly as it found
//!   it (a binary it replaced is restored), does not reload sshd, and after a reload a
//!   plain `authorized_keys` login still works (the old installer left a drop-in naming a
//!   KRL that did not exist, and sshd then refused every public key).
//! - With a real CA the drop-in lands, sshd is reloaded through its PidFile (there is no
//!   running systemd here: the no-systemd path installs the cron file and prints the
//!   foreground command), and a writ certificate logs in; a later failed upgrade restores
//!   the binary and leaves the working install working.
//! - A drop-in sshd would not read (the config does not include it) is refused and rolled
//!   back, state files included.
//! - With `[host_certificates]` in host.toml, the first host certificate is issued before
//!   sshd is touched, the drop-in names it (`HostCertificate`), and after the reload ssh
//!   verifies the host by the CA's `@cert-authority` line alone; a host policy that does
//!   not cover the name fails the install and rolls it back.
//!
//! Needs root and openssh-server; fails (never skips) otherwise.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp};
use common::sshd::{Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd, ssh_login};
use common::{public_key, refusing_port, ssh_keygen};

const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/host/install.sh");
const HOST_NAME: &str = "web-01.prod.example.com";
const DEADLINE: Duration = Duration::from_secs(20);

static USER_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A local user of this test alone, with a key pair that logs in through a plain
/// `authorized_keys` file; `userdel -r` on drop.
struct KeyUser {
    name: String,
    key: PathBuf,
    _keys: tempfile::TempDir,
}

impl KeyUser {
    fn new(host: &TestHost) -> KeyUser {
        let name = format!(
            "writ_inst{}_{}",
            std::process::id(),
            USER_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ensure_user(&name);
        let keys = tempfile::tempdir().expect("tempdir for keys");
        let key = ssh_keygen(keys.path(), "user", &["-t", "ed25519"]);
        let dir = host.dir().join("authorized_keys");
        fs::create_dir_all(&dir).expect("mkdir authorized_keys");
        fs::write(dir.join(&name), format!("{}\n", public_key(&key))).expect("authorized_keys");
        KeyUser {
            name,
            key,
            _keys: keys,
        }
    }
}

impl Drop for KeyUser {
    fn drop(&mut self) {
        // userdel fails while another process holds the passwd lock, or while sshd's
        // per-connection process for this user is still exiting: retry those.
        let deadline = Instant::now() + DEADLINE;
        loop {
            match Command::new("userdel").args(["-r", &self.name]).output() {
                Ok(out) if out.status.success() || out.status.code() == Some(6) => return,
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                other => {
                    eprintln!("userdel -r {} failed: {other:?}", self.name);
                    return;
                }
            }
        }
    }
}

/// The world of one test: a host directory holding the scratch root, a user who logs in
/// with a plain key, and sshd whose config includes the scratch root's drop-ins.
struct World {
    // Drop order: sshd, then the user, then the directory.
    sshd: Sshd,
    user: KeyUser,
    host: TestHost,
}

impl World {
    /// `include_dropins: false` leaves the `Include` out (a host whose sshd_config does
    /// not read sshd_config.d).
    fn new(include_dropins: bool) -> World {
        require_root_and_sshd();
        let host = TestHost::new(common::writ_principals());
        let root = host.dir().join("root");
        fs::create_dir(&root).expect("mkdir root");
        // Cron's directory exists, so the no-systemd path installs the cron file.
        fs::create_dir_all(root.join("etc/cron.d")).expect("mkdir etc/cron.d");
        let user = KeyUser::new(&host);
        let mut prelude = String::new();
        if include_dropins {
            prelude.push_str(&format!(
                "Include {}/etc/ssh/sshd_config.d/*.conf\n",
                root.display()
            ));
        }
        prelude.push_str(&format!(
            "PidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys/%u\n",
            dir = host.dir().display()
        ));
        let sshd = Sshd::start(
            &host,
            SshdOptions {
                prelude,
                no_principals_command: true,
                ..SshdOptions::default()
            },
        );
        let world = World { sshd, user, host };
        world.wait_for_pid_file();
        world
    }

    fn root(&self) -> PathBuf {
        self.host.dir().join("root")
    }

    fn wait_for_pid_file(&self) {
        let path = self.host.dir().join("sshd.pid");
        let want = self.sshd.pid().to_string();
        poll("sshd's pid file", || {
            fs::read_to_string(&path).is_ok_and(|s| s.trim() == want)
        });
    }

    /// Runs install.sh into the scratch root, pointed at this sshd.
    fn install(&self, ca_url: &str, binary: &Path) -> Output {
        Command::new("sh")
            .arg(INSTALL)
            .args([
                "--ca-url",
                ca_url,
                "--host-name",
                HOST_NAME,
                "--user",
                "nobody",
            ])
            .arg("--sshd-config")
            .arg(self.sshd.config_path())
            .arg("--binary")
            .arg(binary)
            .env("ROOT", self.root())
            .env("SSHD", common::sshd::SSHD)
            .output()
            .expect("run install.sh")
    }

    /// How many times sshd has (re)started listening: 1, plus one per reload.
    fn starts(&self) -> usize {
        let line = format!("Server listening on 127.0.0.1 port {}", self.sshd.port());
        self.sshd.log().matches(&line).count()
    }

    /// SIGHUP to sshd, as an operator's reload; returns once it listens again.
    fn reload(&self) {
        let before = self.starts();
        let status = Command::new("kill")
            .args(["-HUP", &self.sshd.pid().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
        self.wait_for_starts(before + 1);
    }

    fn wait_for_starts(&self, n: usize) {
        poll(&format!("sshd listening for the {n}th time"), || {
            self.starts() >= n
        });
        // Listening is logged before the socket accepts only by moments: connect to be sure.
        poll("sshd accepting", || {
            std::net::TcpStream::connect(("127.0.0.1", self.sshd.port())).is_ok()
        });
    }

    fn key_login_works(&self) -> bool {
        ssh_login(self.sshd.port(), &self.user.name, &self.user.key, None).success
    }
}

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every path under `root` with its contents (directories as `dir/`), sorted.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            if path.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(root, &path, out);
            } else {
                out.push((rel, fs::read(&path).expect("read file")));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn names(tree: &[(String, Vec<u8>)]) -> Vec<&str> {
    tree.iter().map(|(name, _)| name.as_str()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Writes an executable stand-in for "the binary of an earlier install".
fn write_old_binary(root: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("usr/local/bin");
    fs::create_dir_all(&dir).expect("mkdir usr/local/bin");
    let old = b"#!/bin/sh\necho an older writ-principals\n".to_vec();
    let path = dir.join("writ-principals");
    fs::write(&path, &old).expect("write old binary");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    old
}

#[test]
fn unreachable_ca_changes_nothing_and_key_logins_keep_working() {
    let world = World::new(true);
    let root = world.root();
    let old_binary = write_old_binary(&root);
    assert!(world.key_login_works(), "control: key login before install");
    let before = tree(&root);

    let (_held, port) = refusing_port();
    let out = world.install(
        &format!("http://127.0.0.1:{port}"),
        common::writ_principals(),
    );

    assert!(
        !out.status.success(),
        "install.sh must fail\n{}",
        describe(&out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the first sync failed") && stderr.contains("rolled back"),
        "a clear message\n{}",
        describe(&out)
    );
    let after = tree(&root);
    assert_eq!(
        names(&after),
        names(&before),
        "the scratch root is as it was (no drop-in, config, state, cron file or backups)\n{}",
        describe(&out)
    );
    assert_eq!(after, before, "the replaced binary is restored");
    assert_eq!(
        fs::read(root.join("usr/local/bin/writ-principals")).expect("binary"),
        old_binary
    );
    assert_eq!(world.starts(), 1, "install.sh did not reload sshd");

    world.reload();
    assert!(
        world.key_login_works(),
        "key login after a failed install and a reload\n{}",
        world.sshd.log()
    );
}

#[test]
fn real_ca_installs_reloads_and_admits_writ_certificates() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let world = World::new(true);
    let login = world.user.name.clone();
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!("name = \"agents\"\nlogins = [\"{login}\"]\nhosts = [\"*.prod.example.com\"]\n"),
    );
    let root = world.root();
    let keys = tempfile::tempdir().expect("tempdir");
    let agent = ssh_keygen(keys.path(), "agent", &["-t", "ed25519"]);
    let response = ca.request_certificate(
        Some(&idp.token(Key::Rsa, "agent-1")),
        &certificate_request(&public_key(&agent), &[&login], &[HOST_NAME], None),
    );
    assert_eq!(response.status, 201, "{}", response.text);
    let cert = keys.path().join("agent-cert.pub");
    fs::write(
        &cert,
        response.json()["certificate"]
            .as_str()
            .expect("certificate"),
    )
    .expect("write cert");
    let cert_login = || ssh_login(world.sshd.port(), &login, &agent, Some(&cert));
    assert!(world.key_login_works(), "control: key login before install");
    assert!(
        !cert_login().success,
        "control: no writ login before install"
    );

    let out = world.install(&ca.url, common::writ_principals());
    assert!(out.status.success(), "{}", describe(&out));

    // What landed, naming the scratch root's paths.
    let r = root.display();
    let dropin = fs::read_to_string(root.join("etc/ssh/sshd_config.d/writ.conf")).expect("drop-in");
    for line in [
        format!("TrustedUserCAKeys {r}/var/lib/writ/trusted_user_ca_keys"),
        format!("RevokedKeys {r}/var/lib/writ/revoked.krl"),
        format!(
            "AuthorizedPrincipalsCommand {r}/usr/local/bin/writ-principals check --config {r}/etc/writ/host.toml -- %u %k"
        ),
        "AuthorizedPrincipalsCommandUser nobody".to_owned(),
    ] {
        assert!(dropin.lines().any(|l| l == line), "{line}\n{dropin}");
    }
    let config = writ::host::config::HostConfig::load(&root.join("etc/writ/host.toml"))
        .expect("valid host.toml");
    assert_eq!(config.ca_url, ca.url);
    assert_eq!(config.host_name.as_deref(), Some(HOST_NAME));
    assert_eq!(config.state_dir, root.join("var/lib/writ"));
    for f in ["trusted_user_ca_keys", "revoked.krl", "revocations.json"] {
        assert!(root.join("var/lib/writ").join(f).is_file(), "{f}");
    }
    let installed = tree(&root);
    assert!(
        !names(&installed)
            .iter()
            .any(|n| n.contains(".writ-backup") || n.contains(".writ-new")),
        "{:?}",
        names(&installed)
    );

    // No running systemd here: the cron file, and the foreground command printed.
    let cron = fs::read_to_string(root.join("etc/cron.d/writ-principals-sync")).expect("cron");
    assert!(
        cron.contains(&format!(
            "* * * * * root {r}/usr/local/bin/writ-principals sync --config {r}/etc/writ/host.toml"
        )),
        "{cron}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("no running systemd"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{r}/usr/local/bin/writ-principals sync --config {r}/etc/writ/host.toml --watch --interval 10s"
        )),
        "{stdout}"
    );

    // install.sh reloaded sshd through its PidFile.
    assert!(stdout.contains("reloaded sshd (SIGHUP"), "{stdout}");
    world.wait_for_starts(2);
    let ok = cert_login();
    assert!(
        ok.success,
        "writ certificate login after install: {}\n{}",
        ok.stderr,
        world.sshd.log()
    );
    assert!(world.key_login_works(), "key logins keep working");

    // A failed upgrade (new binary, CA unreachable) restores the binary it replaced and
    // leaves everything else, and the logins, as they were.
    let (_held, port) = refusing_port();
    let config_path = root.join("etc/writ/host.toml");
    let unreachable = format!("http://127.0.0.1:{port}");
    let toml = fs::read_to_string(&config_path)
        .expect("read host.toml")
        .replace(&ca.url, &unreachable);
    fs::write(&config_path, toml).expect("write host.toml");
    let before = tree(&root);
    let newer = keys.path().join("writ-principals-newer");
    let mut bytes = fs::read(common::writ_principals()).expect("read binary");
    bytes.extend_from_slice(b"\0a newer build\0"); // trailing bytes: still runs
    fs::write(&newer, bytes).expect("write newer binary");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&newer, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = world.install(&unreachable, &newer);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("the first sync failed"),
        "{}",
        describe(&out)
    );
    assert_eq!(names(&tree(&root)), names(&before), "{}", describe(&out));
    assert!(
        tree(&root) == before,
        "every file as before the failed upgrade"
    );
    assert_eq!(world.starts(), 2, "the failed upgrade did not reload sshd");
    assert!(cert_login().success, "writ login after a failed upgrade");
    assert!(world.key_login_works(), "key login after a failed upgrade");
}

#[test]
fn dropin_that_sshd_would_not_read_is_refused_and_rolled_back() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let world = World::new(false);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!(
            "name = \"agents\"\nlogins = [\"{}\"]\nhosts = [\"*.prod.example.com\"]\n",
            world.user.name
        ),
    );
    let root = world.root();
    let before = tree(&root);

    let out = world.install(&ca.url, common::writ_principals());
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("is not in effect"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        names(&tree(&root)),
        names(&before),
        "drop-in, state files, cron file, config and binary removed\n{}",
        describe(&out)
    );
    assert_eq!(world.starts(), 1, "install.sh did not reload sshd");
    assert!(world.key_login_works());
}

/// host.toml for the scratch root with `[host_certificates]` for the test sshd's own key.
fn host_toml_with_host_certificates(world: &World, ca_url: &str, token: &Path) -> String {
    let dir = world.host.dir();
    format!(
        "ca_url = \"{ca_url}\"\nhost_name = \"{HOST_NAME}\"\nstate_dir = \"{state}\"\n\
         token_file = \"{token}\"\n\n[host_certificates]\n\
         keys = [\"{key}\"]\nsshd_pid_file = \"{pid}\"\n",
        state = world.root().join("var/lib/writ").display(),
        token = token.display(),
        key = dir.join("ssh_host_ed25519_key.pub").display(),
        pid = dir.join("sshd.pid").display(),
    )
}

#[test]
fn host_certificates_are_issued_first_and_named_in_the_dropin() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let world = World::new(true);
    let ca = TestCa::with_policy(
        &idp,
        "host_patterns = [\"*.prod.example.com\"]",
        "name = \"agents\"\nsubject = \"agent-*\"\nlogins = [\"nobody\"]\nhosts = [\"*\"]\n\n\
         [[policy]]\nissuer = \"test\"\nname = \"hosts\"\nsubject = \"host-*\"\nrole = \"host\"\n\
         hosts = [\"*.prod.example.com\"]\n",
    );
    let root = world.root();
    let token = world.host.dir().join("host.token");
    let certificate = world.host.dir().join("ssh_host_ed25519_key-cert.pub");
    fs::create_dir_all(root.join("etc/writ")).expect("mkdir etc/writ");
    let config_path = root.join("etc/writ/host.toml");

    // A host policy that does not cover the name: the install fails and leaves nothing.
    fs::write(&token, idp.token(Key::Rsa, "host-web-01")).expect("token");
    let elsewhere = host_toml_with_host_certificates(&world, &ca.url, &token).replace(
        "[host_certificates]\n",
        "[host_certificates]\nnames = [\"db-01.staging.example.com\"]\n",
    );
    fs::write(&config_path, &elsewhere).expect("host.toml");
    let before = tree(&root);
    let out = world.install(&ca.url, common::writ_principals());
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("host-cert failed"),
        "{}",
        describe(&out)
    );
    assert_eq!(names(&tree(&root)), names(&before), "{}", describe(&out));
    assert!(!certificate.exists(), "no certificate is left behind");
    assert_eq!(world.starts(), 1, "sshd was not reloaded");

    // Covered: the certificate is written, named in the drop-in, and served after reload.
    fs::write(&token, idp.token(Key::Rsa, "host-web-01")).expect("token");
    fs::write(
        &config_path,
        host_toml_with_host_certificates(&world, &ca.url, &token),
    )
    .expect("host.toml");
    let out = world.install(&ca.url, common::writ_principals());
    assert!(out.status.success(), "{}", describe(&out));
    assert!(certificate.is_file(), "{}", describe(&out));
    let dropin = fs::read_to_string(root.join("etc/ssh/sshd_config.d/writ.conf")).expect("drop-in");
    let line = format!("HostCertificate {}", certificate.display());
    assert!(dropin.lines().any(|l| l == line), "{line}\n{dropin}");
    // host-cert's own reload, then install.sh's.
    world.wait_for_starts(3);
    let known_hosts = world.host.dir().join("known_hosts");
    let lines = common::http::get(&format!("{}/v1/ca/known-hosts", ca.url)).text;
    fs::write(&known_hosts, lines).expect("known_hosts");
    let probe = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "HostName=127.0.0.1",
        ])
        .arg("-o")
        .arg(format!("HostKeyAlias={HOST_NAME}"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .args(["-o", "PreferredAuthentications=none", "-p"])
        .arg(world.sshd.port().to_string())
        .arg(format!("nobody@{HOST_NAME}"))
        .arg("true")
        .output()
        .expect("ssh");
    let said = text(&probe.stderr);
    // The host was verified (ssh went on to user authentication, which `none` fails).
    assert!(!said.contains("Host key verification failed"), "{said}");
    assert!(said.contains("Permission denied"), "{said}");
    assert!(world.key_login_works(), "key logins keep working");
}

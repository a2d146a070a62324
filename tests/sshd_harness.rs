//! Self-test of the real-OpenSSH harness in `tests/common/sshd.rs`: with a stand-in
//! principals command (a shell script printing one principal) and certificates made by
//! `ssh-keygen`, a real sshd admits exactly the certificate naming that principal, and
//! honours `RevokedKeys`. Needs root and openssh-server; fails (never skips) otherwise.

#[path = "common/sshd.rs"]
mod sshd;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sshd::{
    SshOutcome, Sshd, SshdOptions, TestHost, ensure_user, require_root_and_sshd, ssh_login,
};

const USER: &str = "writ_alice";

fn keygen(args: &[&str], cwd: &Path) {
    let out = Command::new("ssh-keygen")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a user key, and certificates for `someprincipal` and `otherprincipal`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir for keys");
        let d = dir.path();
        keygen(
            &["-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f", "ca"],
            d,
        );
        keygen(
            &["-q", "-t", "ed25519", "-N", "", "-C", "user", "-f", "user"],
            d,
        );
        // Sign copies of user.pub so each certificate gets its own name.
        for principal in ["someprincipal", "otherprincipal"] {
            let pubkey = format!("{principal}.pub");
            fs::copy(d.join("user.pub"), d.join(&pubkey)).expect("copy user.pub");
            keygen(
                &[
                    "-q", "-s", "ca", "-I", "test", "-n", principal, "-V", "+5m", &pubkey,
                ],
                d,
            );
        }
        Keys { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self) -> PathBuf {
        self.path("user")
    }

    fn cert(&self, principal: &str) -> PathBuf {
        self.path(&format!("{principal}-cert.pub"))
    }

    fn ca_pub(&self) -> String {
        fs::read_to_string(self.path("ca.pub")).expect("read ca.pub")
    }
}

/// A host whose "principals binary" is a script printing `someprincipal`.
fn scripted_host(keys: &Keys) -> TestHost {
    let script_dir = tempfile::tempdir().expect("tempdir for script");
    let script = script_dir.path().join("principals.sh");
    fs::write(&script, "#!/bin/sh\necho someprincipal\n").expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod script");
    let host = TestHost::new(&script);
    host.write_trusted_keys(&keys.ca_pub());
    host.write_host_config("# unused by the stand-in script\n");
    host
}

fn describe(what: &str, outcome: &SshOutcome, sshd: &Sshd) -> String {
    format!(
        "{what}\n--- ssh stdout ---\n{}\n--- ssh stderr ---\n{}\n--- sshd log ---\n{}",
        outcome.stdout,
        outcome.stderr,
        sshd.log()
    )
}

#[test]
fn certificate_with_listed_principal_logs_in_and_others_do_not() {
    require_root_and_sshd();
    let keys = Keys::new();
    let host = scripted_host(&keys);
    ensure_user(USER);
    ensure_user(USER); // idempotent
    let sshd = Sshd::start(&host, SshdOptions::default());

    let ok = ssh_login(
        sshd.port(),
        USER,
        &keys.key(),
        Some(&keys.cert("someprincipal")),
    );
    assert!(
        ok.success,
        "{}",
        describe("cert login should succeed", &ok, &sshd)
    );

    let bare = ssh_login(sshd.port(), USER, &keys.key(), None);
    assert!(
        !bare.success,
        "{}",
        describe("key-only login should fail", &bare, &sshd)
    );
    assert!(!bare.stdout.contains(sshd::LOGIN_MARKER));

    let other = ssh_login(
        sshd.port(),
        USER,
        &keys.key(),
        Some(&keys.cert("otherprincipal")),
    );
    assert!(
        !other.success,
        "{}",
        describe("cert for an unlisted principal should fail", &other, &sshd)
    );

    // The refusals came from sshd's checks, not from a broken setup.
    let log = sshd.log();
    assert!(log.contains("Accepted publickey for writ_alice"), "{log}");
    assert!(
        log.contains("Certificate does not contain an authorized principal"),
        "{log}"
    );
}

#[test]
fn revoked_keys_option_is_honoured() {
    require_root_and_sshd();
    let keys = Keys::new();
    let host = scripted_host(&keys);
    ensure_user(USER);

    let krl = host.state_dir().join("revoked_keys");
    keygen(
        &[
            "-q",
            "-k",
            "-f",
            krl.to_str().expect("utf-8 path"),
            "someprincipal-cert.pub",
        ],
        keys.dir.path(),
    );
    let sshd = Sshd::start(
        &host,
        SshdOptions {
            revoked_keys: Some(krl),
            extra_config: "ClientAliveInterval 30\n".into(),
            ..SshdOptions::default()
        },
    );
    let out = ssh_login(
        sshd.port(),
        USER,
        &keys.key(),
        Some(&keys.cert("someprincipal")),
    );
    assert!(
        !out.success,
        "{}",
        describe("revoked cert should fail", &out, &sshd)
    );
    assert!(sshd.log().contains("revoked"), "{}", sshd.log());
}

#[test]
fn hosts_and_daemons_are_independent_and_cleaned_up() {
    require_root_and_sshd();
    let keys = Keys::new();
    let a = scripted_host(&keys);
    let b = scripted_host(&keys);
    assert_ne!(a.dir(), b.dir());
    for dir in [a.dir(), &a.dir().join("bin"), &a.state_dir()] {
        let meta = fs::metadata(dir).expect("stat host dir");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o755,
            "{}",
            dir.display()
        );
    }
    let sa = Sshd::start(&a, SshdOptions::default());
    let sb = Sshd::start(&b, SshdOptions::default());
    assert_ne!(sa.port(), sb.port());

    let dir = a.dir().to_path_buf();
    let proc_dir = PathBuf::from(format!("/proc/{}", sa.pid()));
    assert!(proc_dir.exists());
    drop(sa);
    drop(a);
    assert!(
        !dir.exists(),
        "TestHost drop should remove {}",
        dir.display()
    );
    assert!(
        !proc_dir.exists(),
        "sshd should be killed and reaped on drop"
    );
    drop(sb);
}

//! `writ-principals check` as sshd runs it: a real process, certificates made by
//! `ssh-keygen`. On any doubt it prints nothing and exits non-zero.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::ssh_keygen;

const TASK: &str = "0123456789abcdef0123456789abcdef";
const HOST: &str = "web-01.prod.example.com";

struct Fixture {
    dir: tempfile::TempDir,
    ca: PathBuf,
    user: PathBuf,
    config: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ssh_keygen(dir.path(), "ca", &["-t", "ed25519"]);
        let user = ssh_keygen(dir.path(), "user", &["-t", "ed25519"]);
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state dir");
        std::fs::copy(
            format!("{}.pub", ca.display()),
            state.join("trusted_user_ca_keys"),
        )
        .expect("trust");
        let config = dir.path().join("host.toml");
        std::fs::write(
            &config,
            format!(
                "ca_url = \"http://127.0.0.1:1\"\nhost_name = \"{HOST}\"\nstate_dir = \"{}\"\n",
                state.display()
            ),
        )
        .expect("host.toml");
        let fixture = Fixture {
            dir,
            ca,
            user,
            config,
        };
        fixture.write_feed(&fixture.ca, common::now(), &[]);
        fixture
    }

    /// Write `state/revocations.json`: a feed issued at `issued_at` revoking `tasks`,
    /// signed with `signer` by `ssh-keygen -Y sign` in the feed namespace.
    fn write_feed(&self, signer: &Path, issued_at: i64, tasks: &[&str]) {
        let feed = writ::revocation::feed::Feed {
            version: writ::revocation::feed::VERSION,
            issued_at,
            sequence: 1,
            revoked_tasks: tasks
                .iter()
                .map(|t| writ::revocation::feed::RevokedTask {
                    task_id: (*t).to_owned(),
                    until: issued_at + 600,
                })
                .collect(),
            revoked_serials: vec![],
            // `check` does not look at the binding; `sync` checks it.
            binding: Some(writ::revocation::feed::Binding::of(b"", b"")),
        };
        let json = feed.to_json();
        let message = self.dir.path().join("feed.json");
        std::fs::write(&message, &json).expect("write feed");
        let _ = std::fs::remove_file(self.dir.path().join("feed.json.sig"));
        let status = Command::new("ssh-keygen")
            .args([
                "-q",
                "-Y",
                "sign",
                "-n",
                writ::revocation::feed::NAMESPACE,
                "-f",
            ])
            .arg(signer)
            .arg(&message)
            .status()
            .expect("ssh-keygen -Y sign");
        assert!(status.success());
        let signature =
            std::fs::read_to_string(self.dir.path().join("feed.json.sig")).expect("sig");
        let signed = serde_json::json!({"feed": json, "signature": signature});
        std::fs::write(
            self.dir.path().join("state/revocations.json"),
            signed.to_string(),
        )
        .expect("write");
    }

    /// Sign the user key with `ca` and return the base64 blob sshd would pass as %k.
    fn cert(&self, ca: &Path, name: &str, extra: &[&str]) -> String {
        let pubkey = self.dir.path().join(format!("{name}.pub"));
        std::fs::copy(format!("{}.pub", self.user.display()), &pubkey).expect("copy");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", name, "-n", &format!("writ:{TASK}:deploy")])
            .args(["-O", &format!("extension:task@writ.dev={TASK}")])
            .args(["-O", "extension:hosts@writ.dev=*.prod.example.com"])
            .args(extra)
            .arg(&pubkey)
            .status()
            .expect("ssh-keygen -s");
        assert!(status.success(), "ssh-keygen -s {extra:?}");
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}-cert.pub")))
            .expect("cert");
        text.split_whitespace().nth(1).expect("base64").to_owned()
    }

    fn check(&self, login: &str, cert: &str) -> Output {
        Command::new(common::writ_principals())
            .arg("check")
            .arg("--config")
            .arg(&self.config)
            .args(["--", login, cert])
            .output()
            .expect("run writ-principals")
    }
}

fn assert_denied(out: &Output, what: &str) {
    assert!(!out.status.success(), "{what}: exit 0");
    assert!(
        out.stdout.is_empty(),
        "{what}: printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn admits_a_good_certificate_with_exactly_its_principal() {
    let f = Fixture::new();
    let cert = f.cert(&f.ca, "good", &["-V", "-1m:+5m"]);
    let out = f.check("deploy", &cert);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("writ:{TASK}:deploy\n")
    );
}

#[test]
fn denies_everything_doubtful_and_prints_nothing() {
    let f = Fixture::new();
    let good = f.cert(&f.ca, "good", &["-V", "-1m:+5m"]);
    let host_cert = f.cert(&f.ca, "host", &["-h", "-V", "-1m:+5m"]);
    let expired = f.cert(&f.ca, "expired", &["-V", "20200101:20200102"]);
    let future = f.cert(&f.ca, "future", &["-V", "+1h:+2h"]);
    let other_ca = ssh_keygen(f.dir.path(), "other_ca", &["-t", "ed25519"]);
    let foreign = f.cert(&other_ca, "foreign", &["-V", "-1m:+5m"]);
    let cases: Vec<(&str, &str, String)> = vec![
        ("garbage", "deploy", "!!not base64!!".into()),
        (
            "base64 but not a certificate",
            "deploy",
            "aGVsbG8gd29ybGQ=".into(),
        ),
        ("host certificate", "deploy", host_cert),
        ("expired", "deploy", expired),
        ("not yet valid", "deploy", future),
        ("another CA", "deploy", foreign),
        ("login outside the task", "root", good.clone()),
        ("login that looks like a flag", "--help", good.clone()),
        ("empty login", "", good.clone()),
    ];
    for (what, login, cert) in &cases {
        assert_denied(&f.check(login, cert), what);
    }

    // No trusted keys file at all.
    std::fs::remove_file(f.dir.path().join("state/trusted_user_ca_keys")).expect("rm");
    assert_denied(&f.check("deploy", &good), "missing trusted keys");

    // No config file.
    let out = Command::new(common::writ_principals())
        .args([
            "check",
            "--config",
            "/nonexistent/host.toml",
            "--",
            "deploy",
            &good,
        ])
        .output()
        .expect("run");
    assert_denied(&out, "missing config");
}

#[test]
fn denies_without_fresh_signed_revocation_data() {
    let f = Fixture::new();
    let cert = f.cert(&f.ca, "good", &["-V", "-1m:+5m"]);
    assert!(
        f.check("deploy", &cert).status.success(),
        "control: fresh feed admits"
    );

    f.write_feed(&f.ca, common::now(), &[TASK]);
    assert_denied(&f.check("deploy", &cert), "task revoked in the feed");

    f.write_feed(&f.ca, common::now() - 3600, &[]);
    assert_denied(
        &f.check("deploy", &cert),
        "stale feed (max_staleness defaults to 2m)",
    );

    let other = ssh_keygen(f.dir.path(), "other_ca", &["-t", "ed25519"]);
    f.write_feed(&other, common::now(), &[]);
    assert_denied(&f.check("deploy", &cert), "feed signed by a foreign key");

    std::fs::remove_file(f.dir.path().join("state/revocations.json")).expect("rm");
    assert_denied(&f.check("deploy", &cert), "missing feed");
}

#[test]
fn denies_hosts_outside_the_task() {
    let f = Fixture::new();
    let cert = f.cert(&f.ca, "good", &["-V", "-1m:+5m"]);
    let text = std::fs::read_to_string(&f.config)
        .expect("read")
        .replace(HOST, "db-01.staging.example.com");
    std::fs::write(&f.config, text).expect("write");
    assert_denied(&f.check("deploy", &cert), "host outside the task");
}

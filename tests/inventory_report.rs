//! Inventories round-trip through the CA: two hosts (scratch roots, real `sshd -T`, real
//! `ssh-keygen` keys) run `writ-principals inventory --report` against a real CA;
//! `writ admin inventory` shows the key both hosts accept, the unencrypted private key and
//! which logins it opens, and with `--since` the key that appeared later. Every report is
//! an `inventory.reported` record; a host speaking for a name its policy does not cover is
//! refused and recorded; no private key material reaches any output or record.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::agents::ADMINS_AND_HOSTS;
use common::ca::TestCa;
use common::idp::{Key, TestIdp};
use common::ssh_keygen;
use serde_json::{Value, json};
use writ::audit::{Outcome, event};

const SSHD: &str = "/usr/sbin/sshd";

/// One host as `writ-principals inventory` sees it: a scratch root with `deploy`'s home,
/// an sshd_config (with a host key, so `sshd -T` runs) and a host config.
struct ScratchHost {
    dir: tempfile::TempDir,
    name: String,
}

impl ScratchHost {
    fn new(ca: &TestCa, idp: &TestIdp, name: &str) -> ScratchHost {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install openssh-server (.ci/run does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let ssh_dir = root.join("home/deploy/.ssh");
        fs::create_dir_all(&ssh_dir).expect("home");
        fs::create_dir_all(root.join("etc")).expect("etc");
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\ndeploy:x:1001:1001::/home/deploy:/bin/bash\n",
        )
        .expect("passwd");
        fs::write(
            root.join("etc/shadow"),
            "root:*:1::::::\ndeploy:!:1::::::\n",
        )
        .expect("shadow");
        fs::write(root.join("etc/group"), "root:x:0:\ndeploy:x:1001:\n").expect("group");
        fs::write(ssh_dir.join("authorized_keys"), "").expect("authorized_keys");
        let host_key = ssh_keygen(dir.path(), "ssh_host_ed25519_key", &["-t", "ed25519"]);
        fs::write(
            dir.path().join("sshd_config"),
            format!(
                "HostKey {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
                host_key.display()
            ),
        )
        .expect("sshd_config");
        let token = dir.path().join("token");
        fs::write(&token, idp.token(Key::Rsa, &format!("host:{name}"))).expect("token");
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(
            dir.path().join("host.toml"),
            format!(
                "ca_url = \"{}\"\nhost_name = \"{name}\"\nstate_dir = \"{}\"\ntoken_file = \"{}\"\n",
                ca.url,
                dir.path().join("state").display(),
                token.display()
            ),
        )
        .expect("host.toml");
        ScratchHost {
            dir,
            name: name.to_owned(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Append `public_key_line` to deploy's authorized_keys.
    fn authorize(&self, public_key_line: &str) {
        let path = self.root().join("home/deploy/.ssh/authorized_keys");
        let mut keys = fs::read_to_string(&path).expect("read");
        keys.push_str(public_key_line.trim());
        keys.push('\n');
        fs::write(path, keys).expect("write");
    }

    /// `writ-principals inventory --report --json` on this host.
    fn report(&self) -> Output {
        Command::new(common::writ_principals())
            .arg("--config")
            .arg(self.dir.path().join("host.toml"))
            .args(["inventory", "--report", "--json", "--sshd", SSHD])
            .arg("--root")
            .arg(self.root())
            .arg("--sshd-config")
            .arg(self.dir.path().join("sshd_config"))
            .output()
            .expect("run writ-principals inventory")
    }

    fn report_ok(&self) -> Value {
        let output = self.report();
        assert!(
            output.status.success(),
            "{}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("inventory JSON")
    }
}

fn admin_inventory(ca: &TestCa, args: &[&str]) -> (Value, String) {
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_writ"))
            .args(["admin", "--config"])
            .arg(ca.dir().join("writ.toml"))
            .arg("inventory")
            .args(args)
            .args(extra)
            .output()
            .expect("run writ admin inventory");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let json = serde_json::from_str(&run(&["--json"])).expect("JSON");
    (json, run(&[]))
}

/// The base64 lines of a private key file: what must never appear anywhere.
fn secret_lines(private_key: &Path) -> Vec<String> {
    fs::read_to_string(private_key)
        .expect("private key")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_owned)
        .collect()
}

#[test]
fn reports_round_trip_and_show_shared_keys_private_keys_and_what_changed() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!(
            "name = \"agents\"\nsubject = \"agent-*\"\nlogins = [\"deploy\"]\nhosts = [\"*.prod.example.com\"]\n{ADMINS_AND_HOSTS}"
        ),
    );
    let web1 = ScratchHost::new(&ca, &idp, "web-01.prod.example.com");
    let web2 = ScratchHost::new(&ca, &idp, "web-02.prod.example.com");
    // One key everywhere (the worst case), its private half left unencrypted on web-01.
    let shared = ssh_keygen(
        &web1.root().join("home/deploy/.ssh"),
        "id_ed25519",
        &["-t", "ed25519", "-C", "ci@old-runner"],
    );
    let shared_public = fs::read_to_string(shared.with_extension("pub")).expect("pub");
    let shared_fingerprint = ssh_key::PublicKey::from_openssh(&shared_public)
        .expect("public key")
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    web1.authorize(&shared_public);
    web2.authorize(&shared_public);
    let secrets = secret_lines(&shared);
    assert!(!secrets.is_empty());

    let first = web1.report_ok();
    assert_eq!(first["host"], "web-01.prod.example.com");
    web2.report_ok();
    let reported_at = ca.audit_events(event::INVENTORY_REPORTED).len();
    assert_eq!(reported_at, 2);

    let (fleet, text) = admin_inventory(&ca, &[]);
    assert_eq!(fleet["hosts"].as_array().map(Vec::len), Some(2), "{fleet}");
    assert_eq!(fleet["writ_enforced"], 0, "{fleet}");
    assert_eq!(
        fleet["shared_keys"],
        json!([{
            "fingerprint": shared_fingerprint,
            "hosts": ["web-01.prod.example.com", "web-02.prod.example.com"],
            "logins": ["deploy"],
        }]),
        "{fleet}"
    );
    let private = &fleet["private_keys"];
    assert_eq!(private.as_array().map(Vec::len), Some(1), "{fleet}");
    assert_eq!(private[0]["host"], "web-01.prod.example.com");
    assert_eq!(private[0]["path"], "/home/deploy/.ssh/id_ed25519");
    assert_eq!(private[0]["fingerprint"], shared_fingerprint.as_str());
    assert_eq!(
        private[0]["opens"],
        json!([
            "web-01.prod.example.com/deploy",
            "web-02.prod.example.com/deploy"
        ])
    );
    let static_keys = fleet["static_keys"].as_array().expect("static keys");
    assert_eq!(static_keys.len(), 2, "{fleet}");
    assert!(
        static_keys
            .iter()
            .all(|k| k["detail"]["comment"] == "ci@old-runner")
    );
    assert!(text.contains("shared keys    1"), "{text}");

    // Later, a new key appears on web-02: `--since` names it, and only it.
    let first_seen = static_keys[0]["first_seen"].as_i64().expect("first_seen");
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::now() <= first_seen {
        assert!(Instant::now() < deadline, "the clock does not move");
        std::thread::sleep(Duration::from_millis(50)); // until the next second
    }
    let since = (first_seen + 1).to_string();
    let fresh = ssh_keygen(
        web2.dir.path(),
        "new",
        &["-t", "ecdsa", "-C", "someone@laptop"],
    );
    web2.authorize(&fs::read_to_string(fresh.with_extension("pub")).expect("pub"));
    web2.report_ok();
    let (changed, text) = admin_inventory(&ca, &["--since", &since]);
    let changes = changed["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{changed}");
    assert_eq!(changes[0]["change"], "new");
    assert_eq!(changes[0]["host"], "web-02.prod.example.com");
    assert_eq!(changes[0]["kind"], "static_key");
    assert_eq!(changes[0]["subject"], "deploy");
    assert!(text.contains("1 change(s)"), "{text}");
    let (only_web2, _) = admin_inventory(&ca, &["--host", "web-02*"]);
    assert_eq!(only_web2["hosts"].as_array().map(Vec::len), Some(1));
    assert_eq!(only_web2["private_keys"], json!([]));

    let records = ca.audit_events(event::INVENTORY_REPORTED);
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r.entry.outcome == Some(Outcome::Success))
    );
    let last = &records[2].entry;
    assert_eq!(last.host.as_deref(), Some("web-02.prod.example.com"));
    assert_eq!(
        last.subject.as_deref(),
        Some("host:web-02.prod.example.com")
    );
    assert!(
        last.reason
            .as_deref()
            .is_some_and(|r| r.contains("static-keys=1") && r.contains("new_findings=1")),
        "{last:?}"
    );

    // No private key material anywhere: reports, fleet views, audit records.
    let everything = format!("{first}{fleet}{text}{changed}{:?}", ca.audit());
    for secret in &secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "private key material leaked"
        );
    }
}

#[test]
fn a_host_speaking_for_a_name_its_policy_does_not_cover_is_refused_and_recorded() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = TestCa::with_policy(
        &idp,
        "",
        &format!(
            "name = \"agents\"\nsubject = \"agent-*\"\nlogins = [\"deploy\"]\nhosts = [\"*.prod.example.com\"]\n{ADMINS_AND_HOSTS}"
        ),
    );
    let outsider = ScratchHost::new(&ca, &idp, "db-01.corp.example.org");
    let output = outsider.report();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("host_not_authorized"), "{stderr}");
    let records = ca.audit_events(event::INVENTORY_REPORTED);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].entry.outcome, Some(Outcome::Failure));
    assert_eq!(
        records[0].entry.host.as_deref(),
        Some("db-01.corp.example.org")
    );
    let (fleet, _) = admin_inventory(&ca, &[]);
    assert_eq!(fleet["hosts"], json!([]));
}

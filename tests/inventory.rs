//! `writ-principals inventory` on a scratch host: a root directory with its own
//! /etc/passwd, /etc/shadow, homes, authorized_keys files (options, comments, bad lines, a
//! symlink out of the home) and private keys in every format (made by the real
//! `ssh-keygen`, encrypted and not), and an sshd_config that the real `/usr/sbin/sshd -T`
//! evaluates (a `Match User` block that turns authorized_keys off for one login, a
//! `Match Address` block it cannot evaluate). The JSON is checked field by field, no byte
//! of private key material may appear in any output, and `--plan` must put writ
//! enforcement before anything that could lock the operator out.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use writ_principals::inventory::model::{Inventory, KeyFormat, Verdict};

const SSHD: &str = "/usr/sbin/sshd";
const HOST: &str = "web-01.test";
const PASSPHRASE: &str = "correct horse battery";

/// The scratch host.
struct Host {
    dir: tempfile::TempDir,
    root: PathBuf,
    sshd_config: PathBuf,
    host_config: PathBuf,
    /// Every private key file made (their body lines must never be printed).
    private_key_files: Vec<PathBuf>,
    /// `(file, fingerprint as ssh-keygen -l prints it)` of each public key written to
    /// alice's authorized_keys, in line order.
    alice_keys: Vec<(PathBuf, String, u32)>,
}

/// `ssh-keygen -l`'s size and fingerprint of a public key file.
fn listing(public: &Path) -> (u32, String) {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public)
        .output()
        .expect("ssh-keygen -l");
    assert!(out.status.success(), "ssh-keygen -l {}", public.display());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fields = text.split_whitespace();
    let bits = fields.next().and_then(|b| b.parse().ok()).expect("bits");
    (bits, fields.next().expect("fingerprint").to_owned())
}

/// A key made by ssh-keygen in `dir` with a passphrase (empty: none) and extra args.
fn keygen(dir: &Path, name: &str, passphrase: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-C", name, "-N", passphrase, "-f"])
        .arg(&path)
        .args(args)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen {name} {args:?}");
    path
}

fn pub_path(private: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", private.display()))
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Host {
    fn new() -> Host {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: these tests run the real `sshd -T`; install openssh-server \
             (apt-get install openssh-server)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("mkdir");
        let etc = root.join("etc");

        write(
            &etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n\
             daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
             alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
             bob:x:1001:1001:Bob:/home/bob:/bin/bash\n\
             carol:x:1002:1002:Carol:/home/carol:/bin/bash\n\
             dave:x:1003:1003:Dave:/home/dave:/bin/bash\n\
             svc:x:999:999:Service:/var/lib/svc:/usr/sbin/nologin\n",
            0o644,
        );
        write(
            &etc.join("shadow"),
            "root:!:19000:0:99999:7:::\n\
             daemon:*:19000:0:99999:7:::\n\
             alice:!$6$salt$hash:19000:0:99999:7:::\n\
             bob:!:19000:0:99999:7:::\n\
             carol:*:19000:0:99999:7:::\n\
             dave:$6$salt$0123456789abcdef:19000:0:99999:7:::\n\
             svc:!:19000:0:99999:7:::\n",
            0o640,
        );
        write(
            &etc.join("group"),
            "root:x:0:\nalice:x:1000:\nbob:x:1001:\ncarol:x:1002:\ndave:x:1003:\nsvc:x:999:\n",
            0o644,
        );
        write(&etc.join("hostname"), "scratch\n", 0o644);
        // writ's pieces as sshd_config names them, under the root.
        let ca = keygen(&keys, "writ-ca", "", &["-t", "ed25519"]);
        let ca_line = std::fs::read_to_string(pub_path(&ca)).expect("ca.pub");
        write(
            &root.join("var/lib/writ/trusted_user_ca_keys"),
            &ca_line,
            0o644,
        );
        write(
            &root.join("usr/local/bin/writ-principals"),
            "#!/bin/sh\n",
            0o755,
        );

        // alice: static keys with options and comments, bad lines, private keys.
        let ed = keygen(&keys, "alice-ed25519", "", &["-t", "ed25519"]);
        let rsa = keygen(&keys, "alice-rsa", "", &["-t", "rsa", "-b", "3072"]);
        let ecdsa = keygen(&keys, "alice-ca", "", &["-t", "ecdsa"]);
        let line_of = |private: &Path| {
            std::fs::read_to_string(pub_path(private))
                .expect("pub")
                .trim()
                .to_owned()
        };
        let ed_line = line_of(&ed);
        let authorized = format!(
            "# alice's keys\n\
             from=\"10.0.0.0/8,192.168.0.0/16\",command=\"/usr/bin/deploy --flag \\\"a, b\\\"\",no-pty {ed_line}\n\
             \n\
             restrict {}\n\
             not-an-option {ed_line}\n\
             ssh-ed25519 AAAAbroken\n\
             cert-authority,principals=\"alice,ops\" {}\n",
            line_of(&rsa),
            line_of(&ecdsa)
        );
        let alice_ak = root.join("home/alice/.ssh/authorized_keys");
        write(&alice_ak, &authorized, 0o600);
        // Owned by alice when the test can say so (as root).
        let _ = std::os::unix::fs::chown(&alice_ak, Some(1000), Some(1000));
        let alice_keys = [(&ed, 2u64), (&rsa, 4), (&ecdsa, 7)]
            .iter()
            .map(|(private, _)| {
                let (bits, fingerprint) = listing(&pub_path(private));
                (pub_path(private), fingerprint, bits)
            })
            .collect();

        let alice_ssh = root.join("home/alice/.ssh");
        let mut private_key_files = Vec::new();
        for (name, passphrase, args) in [
            ("id_ed25519", "", &["-t", "ed25519"][..]),
            ("id_rsa_pem", "", &["-t", "rsa", "-b", "2048", "-m", "PEM"]),
            ("id_ecdsa_pkcs8", "", &["-t", "ecdsa", "-m", "PKCS8"]),
            ("id_encrypted", PASSPHRASE, &["-t", "ed25519"]),
            (
                "id_rsa_encrypted_pem",
                PASSPHRASE,
                &["-t", "rsa", "-b", "2048", "-m", "PEM"],
            ),
        ] {
            private_key_files.push(keygen(&alice_ssh, name, passphrase, args));
        }
        // bob: a key sshd never reads (Match User bob: AuthorizedKeysFile none).
        write(
            &root.join("home/bob/.ssh/authorized_keys"),
            &format!("{ed_line}\n"),
            0o600,
        );
        // carol: authorized_keys is a symlink out of her home.
        write(&etc.join("shared_keys"), &format!("{ed_line}\n"), 0o644);
        std::fs::create_dir_all(root.join("home/carol/.ssh")).expect("mkdir");
        std::os::unix::fs::symlink(
            "../../../etc/shared_keys",
            root.join("home/carol/.ssh/authorized_keys"),
        )
        .expect("symlink");
        std::fs::create_dir_all(root.join("home/dave")).expect("mkdir");
        // svc: no login shell, but a forced-command key.
        write(
            &root.join("var/lib/svc/.ssh/authorized_keys"),
            &format!("command=\"/usr/bin/backup\",restrict {ed_line} backup\n"),
            0o600,
        );
        // A --scan directory: an unencrypted SEC1 key and an encrypted PKCS#8 one.
        let scan = root.join("srv/keys");
        std::fs::create_dir_all(&scan).expect("mkdir");
        private_key_files.push(keygen(&scan, "ec_pem", "", &["-t", "ecdsa", "-m", "PEM"]));
        private_key_files.push(keygen(
            &scan,
            "rsa_pkcs8_encrypted",
            PASSPHRASE,
            &["-t", "rsa", "-b", "2048", "-m", "PKCS8"],
        ));

        let host_key = keygen(&keys, "ssh_host_ed25519_key", "", &["-t", "ed25519"]);
        let sshd_config = dir.path().join("sshd_config");
        write(
            &sshd_config,
            &format!(
                "HostKey {}\n\
                 AuthorizedKeysFile .ssh/authorized_keys\n\
                 PasswordAuthentication yes\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 TrustedUserCAKeys /var/lib/writ/trusted_user_ca_keys\n\
                 AuthorizedPrincipalsCommand /usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k\n\
                 AuthorizedPrincipalsCommandUser nobody\n\
                 Match User bob\n\
                 \x20   AuthorizedKeysFile none\n\
                 Match Address 10.0.0.0/8\n\
                 \x20   PasswordAuthentication no\n",
                host_key.display()
            ),
            0o644,
        );
        let host_config = dir.path().join("host.toml");
        write(
            &host_config,
            &format!(
                "ca_url = \"http://127.0.0.1:1\"\nhost_name = \"{HOST}\"\nstate_dir = \"/var/lib/writ\"\n"
            ),
            0o644,
        );
        Host {
            dir,
            root,
            sshd_config,
            host_config,
            private_key_files,
            alice_keys,
        }
    }

    fn run(&self, extra: &[&str]) -> Output {
        Command::new(common::writ_principals())
            .arg("inventory")
            .arg("--config")
            .arg(&self.host_config)
            .arg("--root")
            .arg(&self.root)
            .arg("--sshd-config")
            .arg(&self.sshd_config)
            .args(["--scan", "/srv/keys"])
            .args(extra)
            .output()
            .expect("run writ-principals inventory")
    }

    fn stdout(&self, extra: &[&str]) -> String {
        let out = self.run(extra);
        assert!(
            out.status.success(),
            "inventory {extra:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// No line of any private key file's base64 body (nor its header lines) appears in
    /// `output`.
    fn assert_no_key_material(&self, output: &str) {
        for file in &self.private_key_files {
            let text = std::fs::read_to_string(file).expect("read key");
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with("-----") {
                    continue;
                }
                assert!(
                    !output.contains(line),
                    "private key material of {} in the output: {line}",
                    file.display()
                );
                // Not even a long piece of it.
                if line.len() >= 32 {
                    assert!(!output.contains(&line[..32]), "{}", file.display());
                }
            }
        }
    }
}

/// A file owner as the inventory names it: the scratch /etc/passwd's login, else the uid.
fn owner_name(uid: u32) -> String {
    match uid {
        0 => "root".to_owned(),
        1 => "daemon".to_owned(),
        999 => "svc".to_owned(),
        1000 => "alice".to_owned(),
        1001 => "bob".to_owned(),
        1002 => "carol".to_owned(),
        1003 => "dave".to_owned(),
        other => other.to_string(),
    }
}

fn keys_of(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn json_inventory_field_by_field() {
    let host = Host::new();
    let before = common::now();
    let stdout = host.stdout(&["--json"]);
    host.assert_no_key_material(&stdout);
    let value: Value = serde_json::from_str(&stdout).expect("one JSON document");

    // The exact shape the CA reads.
    assert_eq!(
        keys_of(&value),
        [
            "accounts",
            "encrypted_private_keys",
            "enforcement_problems",
            "generated_at",
            "host",
            "limits_hit",
            "private_keys",
            "skipped",
            "sshd",
            "summary",
            "version",
            "writ_enforced"
        ]
    );
    assert_eq!(
        keys_of(&value["sshd"]),
        [
            "authorized_keys_command",
            "authorized_keys_files",
            "authorized_principals_command",
            "authorized_principals_file",
            "config",
            "error",
            "kbd_interactive_authentication",
            "match_blocks_not_evaluated",
            "password_authentication",
            "permit_root_login",
            "pubkey_authentication",
            "trusted_user_ca_keys"
        ]
    );
    assert_eq!(
        keys_of(&value["accounts"][0]),
        [
            "authorized_keys",
            "bad_lines",
            "home",
            "login",
            "oldest_key_mtime",
            "password_login",
            "shell",
            "static_key_count",
            "uid",
            "verdict"
        ]
    );
    assert_eq!(
        keys_of(&value["summary"]),
        [
            "no-login",
            "password",
            "static-keys",
            "unmanaged",
            "writ-only"
        ]
    );

    let inventory: Inventory = serde_json::from_value(value.clone()).expect("the model");
    assert_eq!(inventory.version, 1);
    assert_eq!(inventory.host, HOST);
    assert!(inventory.generated_at >= u64::try_from(before).expect("time"));

    let sshd = &inventory.sshd;
    assert_eq!(sshd.config, host.sshd_config.display().to_string());
    assert_eq!(sshd.error, None, "sshd -T failed");
    assert_eq!(sshd.authorized_keys_files, [".ssh/authorized_keys"]);
    assert_eq!(sshd.authorized_keys_command, None);
    assert_eq!(sshd.authorized_principals_file, None);
    assert_eq!(
        sshd.authorized_principals_command.as_deref(),
        Some("/usr/local/bin/writ-principals check --config /etc/writ/host.toml -- %u %k")
    );
    assert_eq!(
        sshd.trusted_user_ca_keys.as_deref(),
        Some("/var/lib/writ/trusted_user_ca_keys")
    );
    assert!(sshd.password_authentication);
    assert!(!sshd.kbd_interactive_authentication);
    assert_eq!(sshd.permit_root_login, "prohibit-password");
    assert!(sshd.pubkey_authentication);
    assert_eq!(sshd.match_blocks_not_evaluated.len(), 1);
    let block = &sshd.match_blocks_not_evaluated[0];
    assert_eq!(block.file, host.sshd_config.display().to_string());
    assert_eq!(block.line, 11);
    assert_eq!(block.criteria, "Address 10.0.0.0/8");

    assert!(
        inventory.writ_enforced,
        "{:?}",
        inventory.enforcement_problems
    );
    assert!(inventory.enforcement_problems.is_empty());

    let account = |login: &str| {
        inventory
            .accounts
            .iter()
            .find(|a| a.login == login)
            .unwrap_or_else(|| panic!("account {login}"))
    };
    let logins: Vec<&str> = inventory
        .accounts
        .iter()
        .map(|a| a.login.as_str())
        .collect();
    assert_eq!(
        logins,
        ["root", "daemon", "alice", "bob", "carol", "dave", "svc"]
    );
    let verdicts: Vec<(&str, Verdict)> = inventory
        .accounts
        .iter()
        .map(|a| (a.login.as_str(), a.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("root", Verdict::WritOnly),
            ("daemon", Verdict::NoLogin),
            ("alice", Verdict::StaticKeys),
            ("bob", Verdict::WritOnly),
            ("carol", Verdict::Unmanaged),
            ("dave", Verdict::Password),
            ("svc", Verdict::StaticKeys),
        ]
    );

    // alice, entry by entry.
    let alice = account("alice");
    assert_eq!(alice.uid, 1000);
    assert_eq!(alice.home, "/home/alice");
    assert_eq!(alice.shell, "/bin/bash");
    assert_eq!(alice.password_login, Some(false));
    assert_eq!(alice.static_key_count, 3);
    let file = host.root.join("home/alice/.ssh/authorized_keys");
    let metadata = std::fs::metadata(&file).expect("stat");
    assert_eq!(alice.oldest_key_mtime, Some(metadata.mtime()));
    let owner = owner_name(metadata.uid());
    let expected = [
        (
            2u64,
            "ssh-ed25519",
            "alice-ed25519",
            vec![
                "from=\"10.0.0.0/8,192.168.0.0/16\"",
                "command=\"/usr/bin/deploy --flag \\\"a, b\\\"\"",
                "no-pty",
            ],
            false,
        ),
        (4, "ssh-rsa", "alice-rsa", vec!["restrict"], false),
        (
            7,
            "ecdsa-sha2-nistp256",
            "alice-ca",
            vec!["cert-authority", "principals=\"alice,ops\""],
            true,
        ),
    ];
    assert_eq!(alice.authorized_keys.len(), expected.len());
    for ((key, (line, key_type, comment, options, cert_authority)), (_, fingerprint, bits)) in alice
        .authorized_keys
        .iter()
        .zip(&expected)
        .zip(&host.alice_keys)
    {
        assert_eq!(key.file, "/home/alice/.ssh/authorized_keys");
        assert_eq!(key.line, *line);
        assert_eq!(key.key_type, *key_type);
        assert_eq!(key.bits, *bits, "{key_type}");
        assert_eq!(&key.fingerprint, fingerprint, "{key_type}");
        assert_eq!(key.comment, *comment);
        assert_eq!(&key.options, options);
        assert_eq!(key.cert_authority, *cert_authority);
        assert_eq!(key.file_owner, owner);
        assert_eq!(key.file_mode, "0600");
        assert_eq!(key.file_mtime, metadata.mtime());
    }
    assert_eq!(alice.authorized_keys[1].bits, 3072);
    let bad: Vec<(u64, &str)> = alice
        .bad_lines
        .iter()
        .map(|b| (b.line, b.error.as_str()))
        .collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert_eq!(bad[0], (5, "unknown option \"not-an-option\""));
    assert_eq!(bad[1].0, 6);
    assert!(
        bad[1].1.starts_with("ssh-ed25519 key does not parse"),
        "{bad:?}"
    );
    assert!(
        alice
            .bad_lines
            .iter()
            .all(|b| b.file == "/home/alice/.ssh/authorized_keys")
    );

    // bob: Match User bob turns authorized_keys off, so his file does not count.
    let bob = account("bob");
    assert_eq!(bob.static_key_count, 0);
    assert!(bob.authorized_keys.is_empty());
    assert_eq!(bob.oldest_key_mtime, None);
    // carol: the symlink out of her home is refused and reported.
    let carol = account("carol");
    assert!(carol.authorized_keys.is_empty());
    let refused = inventory
        .skipped
        .iter()
        .find(|s| s.path == "/home/carol/.ssh/authorized_keys")
        .expect("carol's symlink in skipped");
    assert!(
        refused.reason.contains("outside the home of carol"),
        "{}",
        refused.reason
    );
    assert_eq!(account("dave").password_login, Some(true));
    assert_eq!(account("root").password_login, Some(false));
    let svc = account("svc");
    assert_eq!(svc.static_key_count, 1);
    assert_eq!(
        svc.authorized_keys[0].options,
        ["command=\"/usr/bin/backup\"", "restrict"]
    );
    assert_eq!(svc.authorized_keys[0].comment, "alice-ed25519 backup");

    // Private keys: the unencrypted ones, by fingerprint; the encrypted ones counted.
    let found: Vec<(&str, KeyFormat, &str)> = inventory
        .private_keys
        .iter()
        .map(|k| (k.path.as_str(), k.format, k.key_type.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "/home/alice/.ssh/id_ecdsa_pkcs8",
                KeyFormat::Pkcs8,
                "ecdsa-sha2-nistp256"
            ),
            (
                "/home/alice/.ssh/id_ed25519",
                KeyFormat::Openssh,
                "ssh-ed25519"
            ),
            ("/home/alice/.ssh/id_rsa_pem", KeyFormat::Pkcs1, "ssh-rsa"),
            ("/srv/keys/ec_pem", KeyFormat::Sec1, "ecdsa-sha2-nistp256"),
        ]
    );
    for key in &inventory.private_keys {
        let on_disk = host.root.join(key.path.trim_start_matches('/'));
        let (_, fingerprint) = listing(&pub_path(&on_disk));
        assert_eq!(
            key.fingerprint.as_deref(),
            Some(fingerprint.as_str()),
            "{}",
            key.path
        );
        let metadata = std::fs::metadata(&on_disk).expect("stat");
        assert_eq!(key.mode, "0600");
        assert_eq!(key.mtime, metadata.mtime());
        assert_eq!(key.owner, owner_name(metadata.uid()));
    }
    assert_eq!(inventory.encrypted_private_keys, 3);
    assert!(!inventory.limits_hit);
    let summary = &inventory.summary;
    assert_eq!(
        (
            summary.writ_only,
            summary.static_keys,
            summary.password,
            summary.unmanaged,
            summary.no_login
        ),
        (2, 2, 1, 1, 1)
    );

    // The text report says the same, without key material either.
    let text = host.stdout(&[]);
    host.assert_no_key_material(&text);
    assert!(text.contains("writ enforcement: configured"), "{text}");
    assert!(text.contains(&host.alice_keys[0].1), "{text}");
    assert!(text.contains("Match Address 10.0.0.0/8"), "{text}");
    assert!(
        text.contains("Summary: writ-only 2, static-keys 2, password 1, unmanaged 1, no-login 1"),
        "{text}"
    );
    drop(host.dir);
}

#[test]
fn plan_puts_enforcement_first() {
    let host = Host::new();
    let plan = host.stdout(&["--plan", "alice"]);
    host.assert_no_key_material(&plan);
    for expected in [
        "Match User alice",
        "AuthorizedKeysFile none",
        "[[policy]]",
        "logins = [\"alice\"]",
        "hosts = [\"web-01.test\"]",
        "sshd -t",
        "keep a root session",
        "/home/alice/.ssh/authorized_keys:2",
        "/home/alice/.ssh/authorized_keys:7",
    ] {
        assert!(plan.contains(expected), "{expected:?} missing:\n{plan}");
    }
    for (_, fingerprint, _) in &host.alice_keys {
        assert!(
            plan.contains(fingerprint.as_str()),
            "{fingerprint}:\n{plan}"
        );
    }
    // The policy snippet is a valid writ.toml [[policy]].
    #[derive(serde::Deserialize)]
    struct Policies {
        policy: Vec<writ::config::PolicyConfig>,
    }
    let snippet: String = plan
        .lines()
        .skip_while(|l| l.trim() != "[[policy]]")
        .take_while(|l| !l.trim().is_empty() && l.starts_with("     "))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let policies: Policies = toml::from_str(&snippet).expect("a valid [[policy]]");
    assert_eq!(policies.policy[0].logins, ["alice"]);
    assert_eq!(policies.policy[0].hosts, [HOST]);

    // Without writ enforcement, the plan says to fix it first and warns of the lockout.
    let config = std::fs::read_to_string(&host.sshd_config).expect("read");
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("AuthorizedPrincipalsCommand "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&host.sshd_config, without).expect("write");
    let plan = host.stdout(&["--plan", "alice"]);
    assert!(
        plan.contains("first fix: AuthorizedPrincipalsCommand is not set"),
        "{plan}"
    );
    assert!(plan.contains("do NOT remove keys"), "{plan}");
    let first_fix = plan.find("first fix").expect("first fix");
    let match_block = plan.find("Match User alice").expect("match block");
    assert!(first_fix < match_block, "{plan}");
    let json: Inventory = serde_json::from_str(&host.stdout(&["--json"])).expect("json");
    assert!(!json.writ_enforced);
    assert_eq!(
        json.accounts
            .iter()
            .find(|a| a.login == "bob")
            .map(|a| a.verdict),
        Some(Verdict::Unmanaged)
    );
}

#[test]
fn usage_and_errors_exit_codes() {
    let host = Host::new();
    let unknown = host.run(&["--plan", "mallory"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("mallory"));
    let bad_flag = host.run(&["--no-such-flag"]);
    assert_eq!(bad_flag.status.code(), Some(2));
    let conflict = host.run(&["--plan", "alice", "--json"]);
    assert_eq!(conflict.status.code(), Some(2));
    // A missing sshd: reported, verdicts conservative, exit 0.
    let out = host.run(&["--json", "--sshd", "/nonexistent/sshd"]);
    assert!(out.status.success());
    let inventory: Inventory = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        inventory
            .sshd
            .error
            .as_deref()
            .is_some_and(|e| e.contains("/nonexistent/sshd"))
    );
    assert!(!inventory.writ_enforced);
    // --report without a reachable CA fails clearly (exit 1).
    let token = host.dir.path().join("token");
    std::fs::write(&token, "host.jwt\n").expect("token");
    let mut config = std::fs::read_to_string(&host.host_config).expect("read");
    config.push_str(&format!("token_file = \"{}\"\n", token.display()));
    std::fs::write(&host.host_config, config).expect("write");
    let (_held, port) = common::refusing_port();
    let config = std::fs::read_to_string(&host.host_config)
        .expect("read")
        .replace("http://127.0.0.1:1", &format!("http://127.0.0.1:{port}"));
    std::fs::write(&host.host_config, config).expect("write");
    let report = host.run(&["--report"]);
    assert_eq!(report.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&report.stderr);
    assert!(stderr.contains("inventory --report failed"), "{stderr}");
    assert!(stderr.contains("/v1/inventory"), "{stderr}");
    // An unreadable root is an error.
    let out = Command::new(common::writ_principals())
        .args(["inventory", "--root", "/nonexistent/root"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

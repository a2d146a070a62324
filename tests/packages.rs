//! The Debian packages (README "Packages"): `cargo deb` builds `writ` (the CA) and
//! `cargo deb -p writ-principals` builds `writ-principals` (SSH hosts), each from the
//! `[package.metadata.deb]` of its crate's Cargo.toml.
//!
//! The test packages the binaries this test run has already built (`--no-build` with a
//! scratch target directory holding them as `release/…`), so it checks the packaging —
//! control data, conffiles, contents, maintainer scripts, that the installed binaries run
//! and that `check` fails closed — without a second, release compile. It needs cargo-deb
//! (`cargo install cargo-deb --version 3.8.0 --locked`; `.ci/run` installs it) and dpkg,
//! and fails rather than skips without them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn require_tools() {
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output();
    if !cargo_deb.is_ok_and(|o| o.status.success()) {
        panic!(
            "cargo-deb is not installed: `cargo install cargo-deb --version 3.8.0 --locked` \
             (.ci/run installs it when missing)"
        );
    }
    for tool in ["dpkg-deb", "ssh-keygen"] {
        if Command::new(tool).arg("--help").output().is_err() {
            panic!("`{tool}` is not on PATH (apt-get install dpkg openssh-client)");
        }
    }
}

/// Builds both packages into `dir/debian` from the binaries of this test run.
fn build_packages(dir: &Path) -> (PathBuf, PathBuf) {
    let release = dir.join("target/release");
    fs::create_dir_all(&release).expect("mkdir target/release");
    for bin in [
        Path::new(env!("CARGO_BIN_EXE_writ")),
        common::writ_principals(),
    ] {
        fs::copy(bin, release.join(bin.file_name().expect("name"))).expect("copy binary");
    }
    let out_dir = dir.join("debian");
    for package in ["writ", "writ-principals"] {
        run(Command::new("cargo")
            .args(["deb", "-p", package, "--no-build", "--fast", "--output"])
            .arg(&out_dir)
            .current_dir(MANIFEST_DIR)
            .env("CARGO_TARGET_DIR", dir.join("target")));
    }
    let deb = |name: &str| {
        let path = out_dir.join(format!("{name}_{VERSION}-1_amd64.deb"));
        assert!(path.is_file(), "no {}", path.display());
        path
    };
    (deb("writ"), deb("writ-principals"))
}

fn field(control: &str, name: &str) -> String {
    control
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in\n{control}"))
        .to_owned()
}

/// `dpkg-deb -c`, as paths without the leading `.`.
fn contents(deb: &Path) -> Vec<String> {
    stdout(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

fn control_file(deb: &Path, name: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("-I").arg(deb).arg(name))
}

#[test]
fn packages_build_install_and_fail_closed() {
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    let (writ, principals) = build_packages(dir.path());

    // writ: the CA binary, its example config (a conffile) and unit; nothing for hosts.
    let control = stdout(Command::new("dpkg-deb").arg("-I").arg(&writ));
    assert_eq!(field(&control, "Package"), "writ");
    assert_eq!(field(&control, "Version"), format!("{VERSION}-1"));
    assert_eq!(
        control_file(&writ, "conffiles").trim(),
        "/etc/writ/writ.toml"
    );
    let files = contents(&writ);
    for want in [
        "/usr/bin/writ",
        "/etc/writ/writ.toml",
        "/usr/lib/systemd/system/writ.service",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} in {files:?}");
    }
    assert!(
        !files.iter().any(|f| f.contains("writ-principals")),
        "{files:?}"
    );

    // writ-principals: the host binary, host.toml (a conffile), the sync unit, and what
    // enabling needs under /usr/share — but nothing that changes sshd, PAM or cron.
    let control = stdout(Command::new("dpkg-deb").arg("-I").arg(&principals));
    assert_eq!(field(&control, "Package"), "writ-principals");
    assert_eq!(
        control_file(&principals, "conffiles").trim(),
        "/etc/writ/host.toml"
    );
    let files = contents(&principals);
    for want in [
        "/usr/bin/writ-principals",
        "/etc/writ/host.toml",
        "/usr/lib/systemd/system/writ-principals-sync.service",
        "/usr/share/writ-principals/install.sh",
        "/usr/share/writ-principals/host.toml",
        "/usr/share/writ-principals/sshd_config.d-writ.conf",
        "/usr/share/writ-principals/writ-principals-sync.cron",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} in {files:?}");
    }
    for file in &files {
        assert!(
            !(file == "/usr/bin/writ"
                || file.starts_with("/etc/ssh")
                || file.starts_with("/etc/pam.d")
                || file.starts_with("/etc/cron.d")
                || file.starts_with("/usr/lib/sysusers.d")),
            "{file} must not be in writ-principals"
        );
    }
    // Maintainer scripts: create the user, start and enable nothing, never touch sshd.
    for deb in [&writ, &principals] {
        let postinst = control_file(deb, "postinst");
        assert!(postinst.contains("useradd --system"), "{postinst}");
        for never in [
            "systemd-sysusers",
            "deb-systemd-invoke start",
            "systemctl enable",
            "reload ssh",
            "kill -HUP",
        ] {
            assert!(!postinst.contains(never), "{never} in\n{postinst}");
        }
    }

    // Unpacked, the binaries run; `check` with no synced state fails closed.
    let root = dir.path().join("root");
    for deb in [&writ, &principals] {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    }
    let version = stdout(Command::new(root.join("usr/bin/writ")).arg("--version"));
    assert_eq!(version.trim(), format!("writ {VERSION}"));
    let version = stdout(Command::new(root.join("usr/bin/writ-principals")).arg("--version"));
    assert_eq!(version.trim(), format!("writ-principals {VERSION}"));

    writ::config::Config::load(&root.join("etc/writ/writ.toml"))
        .expect("the shipped writ.toml is valid");
    let shipped = root.join("etc/writ/host.toml");
    writ::host::config::HostConfig::load(&shipped).expect("the shipped host.toml is valid");
    let state = dir.path().join("empty-state");
    let config = dir.path().join("host.toml");
    let text = fs::read_to_string(&shipped).expect("read host.toml");
    assert!(text.contains("state_dir = \"/var/lib/writ\""), "{text}");
    fs::write(
        &config,
        text.replace(
            "state_dir = \"/var/lib/writ\"",
            &format!("state_dir = \"{}\"", state.display()),
        ),
    )
    .expect("write host.toml");
    // A well-formed certificate, so the refusal is about the missing state.
    let ca = common::ssh_keygen(dir.path(), "ca", &["-t", "ed25519"]);
    let user = common::ssh_keygen(dir.path(), "user", &["-t", "ed25519"]);
    run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "test", "-n", "writ:t:deploy", "-V", "-1m:+5m"])
        .arg(format!("{}.pub", user.display())));
    let cert_line =
        fs::read_to_string(format!("{}-cert.pub", user.display())).expect("read certificate");
    let cert_b64 = cert_line.split_whitespace().nth(1).expect("base64 field");
    let out = Command::new(root.join("usr/bin/writ-principals"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .args(["--", "deploy", cert_b64])
        .output()
        .expect("run check");
    assert!(!out.status.success(), "check admitted with no state");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("writ-principals: denied:") && !stderr.contains("malformed"),
        "{stderr}"
    );

    // The packaged enabling step with an unreachable CA: fails, and leaves the package's
    // files (the binary above all, which --packaged never copies) exactly as they were.
    let host_key = common::ssh_keygen(dir.path(), "host_key", &["-t", "ed25519"]);
    fs::create_dir_all(root.join("etc/ssh")).expect("mkdir etc/ssh");
    fs::write(
        root.join("etc/ssh/sshd_config"),
        format!(
            "Include {}/etc/ssh/sshd_config.d/*.conf\nHostKey {}\n",
            root.display(),
            host_key.display()
        ),
    )
    .expect("write sshd_config");
    let before = tree(&root);
    let (_held, port) = common::refusing_port();
    let out = Command::new("sh")
        .arg(root.join("usr/share/writ-principals/install.sh"))
        .args(["--packaged", "--user", "nobody", "--ca-url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env("ROOT", &root)
        .output()
        .expect("run install.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the first sync failed"), "{stderr}");
    assert!(
        tree(&root) == before,
        "the unpacked package is as it was\n{stderr}"
    );
}

/// Every path under `root` with its contents, sorted.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path.clone());
                out.push((path, Vec::new()));
            } else {
                let bytes = fs::read(&path).expect("read");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// packaging/deb/ holds the packages' copies of contrib/ files, with /usr/bin where
/// contrib/ (for install.sh's /usr/local/bin) has /usr/local/bin, and nothing else changed.
#[test]
fn packaged_copies_match_contrib() {
    for (contrib, packaged) in [
        (
            "contrib/systemd/writ.service",
            "packaging/deb/writ/writ.service",
        ),
        (
            "contrib/systemd/writ-principals-sync.service",
            "packaging/deb/writ-principals/writ-principals-sync.service",
        ),
        (
            "contrib/host/sshd_config.d-writ.conf",
            "packaging/deb/writ-principals/sshd_config.d-writ.conf",
        ),
        (
            "contrib/host/writ-principals-sync.cron",
            "packaging/deb/writ-principals/writ-principals-sync.cron",
        ),
        (
            "contrib/host/pam.d-sshd-writ",
            "packaging/deb/writ-principals/pam.d-sshd-writ",
        ),
    ] {
        let read = |p: &str| {
            fs::read_to_string(Path::new(MANIFEST_DIR).join(p))
                .unwrap_or_else(|e| panic!("read {p}: {e}"))
        };
        let want = read(contrib).replace("/usr/local/bin/", "/usr/bin/");
        assert_eq!(
            read(packaged),
            want,
            "{packaged} should be {contrib} with /usr/bin paths (regenerate: \
             sed 's|/usr/local/bin/|/usr/bin/|g' {contrib} > {packaged})"
        );
        assert!(!want.contains("/usr/local/"), "{packaged}");
    }
}

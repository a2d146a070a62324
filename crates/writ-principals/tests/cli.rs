//! The `writ-principals` binary as sshd and operators run it. These tests also make
//! `cargo test --workspace` build the binary before any test runs, which the root
//! crate's integration tests (tests/common::writ_principals) rely on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_writ-principals");

fn run(args: &[&str], config: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(args)
        .env_remove("WRIT_HOST_CONFIG")
        .output()
        .expect("run writ-principals")
}

/// A host configuration whose state directory is empty: nothing synced yet.
fn unsynced_host(dir: &Path) -> std::path::PathBuf {
    let state = dir.join("state");
    fs::create_dir(&state).expect("mkdir state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod state");
    let config = dir.join("host.toml");
    fs::write(
        &config,
        format!(
            "ca_url = \"http://127.0.0.1:9\"\nhost_name = \"web-01.example.com\"\n\
             state_dir = \"{}\"\nmode = \"offline\"\n",
            state.display()
        ),
    )
    .expect("write host.toml");
    config
}

#[test]
fn help_names_the_subcommands_and_the_sshd_line() {
    let out = run(&["--help"], None);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["check", "sync", "session", "AuthorizedPrincipalsCommand"] {
        assert!(help.contains(want), "{want} in\n{help}");
    }
    let out = run(&["--version"], None);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("writ-principals {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The sshd line with nothing synced: denied, nothing on stdout, the reason on stderr.
#[test]
fn check_without_synced_state_denies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = unsynced_host(dir.path());
    let config = config.to_str().expect("utf-8 path");
    for args in [
        // The exact sshd_config shape (parsed before clap) and another one (through clap).
        &[
            "check",
            "--config",
            config,
            "--",
            "deploy",
            "AAAAC3NzaC1lZDI1NTE5",
        ][..],
        &[
            "check",
            "deploy",
            "AAAAC3NzaC1lZDI1NTE5",
            "--config",
            config,
        ],
    ] {
        let out = run(args, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("writ-principals: denied: "), "{stderr}");
    }
}

#[test]
fn check_with_a_missing_config_denies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        &["check", "--", "deploy", "AAAAC3NzaC1lZDI1NTE5"],
        Some(&dir.path().join("absent.toml")),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "writ-principals: denied: config_error"
    );
}

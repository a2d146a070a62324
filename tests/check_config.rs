//! Configuration tooling as an operator runs it (README "Checking a configuration"), with
//! the real binary: `writ admin default-config` prints a configuration `writ check-config`
//! accepts; `check-config` resolves issuers' keys from a real JWKS server, shows each
//! policy's effective grant, flags each risky pattern, exits 1 naming the file and key of
//! an invalid file; and the README's configuration example is valid too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::idp::{Key, TestIdp};
use common::refusing_port;
use serde_json::Value;

const WRIT: &str = env!("CARGO_BIN_EXE_writ");

fn writ(args: &[&str]) -> Output {
    Command::new(WRIT)
        .args(args)
        .env_remove("WRIT_CONFIG")
        .env_remove("WRIT_CA_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run writ")
}

fn check(path: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["check-config", "--config", path.to_str().expect("path")];
    args.extend_from_slice(extra);
    writ(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&output.stdout), text(&output.stderr)))
}

fn warning_codes(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w["code"].as_str().expect("code").to_owned())
        .collect()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path
}

#[test]
fn default_config_round_trips_through_check_config() {
    let printed = writ(&["admin", "default-config"]);
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let config = text(&printed.stdout);
    assert_eq!(
        config,
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/writ.toml"))
            .expect("contrib/writ.toml")
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "writ.toml", &config);

    // The file alone: valid, no warning at all.
    let offline = check(&path, &["--offline", "--json"]);
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    let offline = report(&offline);
    assert_eq!(offline["valid"], true);
    assert_eq!(warning_codes(&offline), Vec::<String>::new());
    assert_eq!(offline["issuers"][0]["keys"], "not_checked");
    assert_eq!(offline["policies"][0]["name"], "ci-deployers");

    // Resolved on a machine that is not the CA host: the issuer's key file and the
    // passphrase file are missing, which are warnings; the file is still valid (exit 0).
    let resolved = check(&path, &[]);
    assert!(resolved.status.success(), "{}", text(&resolved.stderr));
    let out = text(&resolved.stdout);
    assert!(out.contains(": valid\n"), "{out}");
    assert!(
        out.contains("ci-deployers (issuer k8s-prod, role agent)"),
        "{out}"
    );
    assert!(
        out.contains("certificates up to 5m, tasks up to 1h"),
        "{out}"
    );
    assert!(out.contains("WARNING [issuer_keys_unavailable]"), "{out}");
    assert!(
        out.contains("WARNING [passphrase_unavailable] ca.passphrase_file"),
        "{out}"
    );
}

#[test]
fn check_config_resolves_issuer_keys_and_flags_each_risky_pattern() {
    let idp = TestIdp::start(&[Key::Rsa, Key::Ed25519]);
    let (_held, port) = refusing_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = write(dir.path(), "ca.pass", "a passphrase\n");
    let config = format!(
        r#"
[server]
metrics_listen = "0.0.0.0:0"

[ca]
passphrase_file = "{pass}"
max_cert_ttl = "30m"
max_task_ttl = "1d"

[[issuer]]
name = "idp"
issuer = "{iss}"
jwks_url = "{jwks}"
audiences = ["writ"]
replay = "allow"
max_token_lifetime = "2h"

[[issuer]]
name = "gone"
issuer = "https://gone.example"
jwks_url = "http://127.0.0.1:{port}/jwks"
audiences = ["writ"]

[[policy]]
name = "everyone"
issuer = "idp"
subject = "*"
logins = ["root", "{{sub}}"]
hosts = ["*"]
max_cert_ttl = "20m"
"#,
        pass = pass.display(),
        iss = idp.issuer,
        jwks = idp.jwks_url(),
    );
    let path = write(dir.path(), "writ.toml", &config);
    let output = check(&path, &["--json", "--timeout", "3s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = report(&output);
    assert_eq!(report["valid"], true);
    let idp_report = &report["issuers"][0];
    assert_eq!(idp_report["keys"], "ok", "{report}");
    assert_eq!(idp_report["key_count"], 2, "{report}");
    assert_eq!(report["issuers"][1]["keys"], "failed", "{report}");
    let policy = &report["policies"][0];
    assert_eq!(policy["max_cert_ttl_seconds"], 20 * 60);
    assert_eq!(policy["max_task_ttl_seconds"], 24 * 3600);
    assert_eq!(policy["role"], "agent");

    let found: Vec<(String, String)> = report["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| {
            (
                w["code"].as_str().expect("code").to_owned(),
                w["key"].as_str().expect("key").to_owned(),
            )
        })
        .collect();
    let want = [
        ("issuer_keys_unavailable", "issuer[1] (\"gone\")"),
        ("plaintext_metrics_listen", "server.metrics_listen"),
        ("ttl_above_recommendation", "ca.max_cert_ttl"),
        ("ttl_above_recommendation", "ca.max_task_ttl"),
        (
            "ttl_above_recommendation",
            "issuer[0] (\"idp\").max_token_lifetime",
        ),
        ("replay_allow_long_tokens", "issuer[0] (\"idp\").replay"),
        ("unconstrained_subject", "policy[0] (\"everyone\").subject"),
        ("wide_host_pattern", "policy[0] (\"everyone\").hosts[0]"),
        (
            "root_login_unconstrained",
            "policy[0] (\"everyone\").logins[0]",
        ),
        (
            "templated_login_unconstrained",
            "policy[0] (\"everyone\").logins[1]",
        ),
    ]
    .map(|(c, k)| (c.to_owned(), k.to_owned()));
    assert_eq!(found, want, "{report}");

    // The same in text: one WARNING line each, naming the recommendation it exceeds.
    let plain = check(&path, &["--timeout", "3s"]);
    assert!(plain.status.success());
    let out = text(&plain.stdout);
    assert_eq!(out.matches("  WARNING [").count(), want.len(), "{out}");
    assert!(out.contains("30m is above the recommended 15m"), "{out}");
    assert!(out.contains("2 usable key(s)"), "{out}");
}

#[test]
fn an_invalid_file_is_exit_1_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "writ.toml", "[server]\nlog_format = \"xml\"\n");
    let output = check(&path, &["--offline"]);
    assert_eq!(output.status.code(), Some(1));
    let error = text(&output.stderr);
    assert!(error.starts_with("writ: error: "), "{error}");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("log_format"), "{error}");

    let json = check(&path, &["--offline", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report = report(&json);
    assert_eq!(report["valid"], false);
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("log_format")),
        "{report}"
    );

    let missing = check(&dir.path().join("nope.toml"), &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("nope.toml"));
    let none = writ(&["check-config"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        text(&none.stderr).contains("--config"),
        "{}",
        text(&none.stderr)
    );
}

/// The README's configuration example ("Configuration") is a valid configuration, with no
/// risky pattern but the templated login the README shows under a claim constraint.
#[test]
fn the_readme_configuration_example_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("a Configuration section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a TOML example");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "writ.toml", example);
    let output = check(&path, &["--offline", "--json"]);
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert_eq!(warning_codes(&report(&output)), Vec::<String>::new());
    for key in ["metrics_listen", "log_format", "readyz_requires_issuers"] {
        assert!(example.contains(key), "README example lacks {key}");
    }
}

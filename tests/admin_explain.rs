//! `writ admin policy explain` end to end: the real `writ` binary, a configuration file
//! as an operator writes it, and a real test IdP serving its JWKS over HTTP. Checks the
//! text and JSON forms, every way the token can be given, a refused (expired) token, and
//! that nothing is written (no database appears).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::idp::{Key, TestIdp};
use common::now;
use serde_json::{Value, json};

/// The explained configuration: a policy that never matches `agent-7` by subject, one that
/// misses a claim, and the one that matches.
const POLICIES: &str = r#"
[[policy]]
name = "other-team"
issuer = "test-idp"
subject = "robot-*"
logins = ["ops"]
hosts = ["*"]

[[policy]]
name = "payments"
issuer = "test-idp"
subject = "agent-*"
claims = { team = "payments" }
logins = ["pay"]
hosts = ["*"]

[[policy]]
name = "deployers"
issuer = "test-idp"
subject = "agent-*"
claims = { "kubernetes.io.namespace" = "ci" }
logins = ["deploy", "{sub}"]
hosts = ["*.prod.example.com"]
max_cert_ttl = "5m"
extensions = ["permit-pty"]
"#;

struct Setup {
    idp: TestIdp,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let idp = TestIdp::start(&[Key::Rsa]);
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("ca.pass");
        std::fs::write(&pass, "test passphrase\n").expect("write passphrase");
        let text = format!(
            "[storage]\nurl = \"sqlite://{db}\"\n\n[ca]\npassphrase_file = \"{pass}\"\n\n\
             [[issuer]]\nname = \"test-idp\"\nissuer = \"{iss}\"\njwks_url = \"{jwks}\"\n\
             audiences = [\"writ\"]\n{POLICIES}",
            db = dir.path().join("writ.db").display(),
            pass = pass.display(),
            iss = idp.issuer,
            jwks = idp.jwks_url(),
        );
        let config = dir.path().join("writ.toml");
        std::fs::write(&config, text).expect("write config");
        Setup { idp, dir, config }
    }

    /// A token for `agent-7` in namespace `ci`.
    fn token(&self) -> String {
        let mut claims = self.idp.claims("agent-7");
        claims["kubernetes.io"] = json!({"namespace": "ci", "serviceaccount": {"name": "bot"}});
        self.idp.sign(Key::Rsa, &claims)
    }

    /// Run `writ admin --config FILE policy explain ARGS…`, feeding `stdin`.
    fn explain(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = writ();
        command
            .args(["admin", "--config"])
            .arg(&self.config)
            .args(["policy", "explain"])
            .args(args);
        run(command, stdin)
    }

    fn database_was_not_created(&self) {
        assert!(
            !self.dir.path().join("writ.db").exists(),
            "explain must not open the store"
        );
    }
}

/// The `writ` binary, without configuration from the test's environment.
fn writ() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_writ"));
    command
        .env_remove("WRIT_CONFIG")
        .env_remove("WRIT_CA_PASSPHRASE");
    command
}

fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run writ");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for writ")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_token(dir: &Path, token: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).expect("write token");
    format!("@{}", path.display())
}

#[test]
fn explains_every_policy_and_the_grant() {
    let setup = Setup::new();
    let token = setup.token();
    let token_arg = write_token(setup.dir.path(), &token);
    let output = setup.explain(
        &[
            "--token",
            &token_arg,
            "--logins",
            "deploy,agent-7",
            "--hosts",
            "web-*.prod.example.com",
        ],
        "",
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    for expected in [
        &format!(
            "Token: verified by issuer \"test-idp\" ({})",
            setup.idp.issuer
        ),
        "  subject  agent-7",
        "replay   reject",
        "kubernetes.io.namespace",
        "kubernetes.io.serviceaccount.name",
        "1. \"other-team\": does not match: subject \"agent-7\" does not match \"robot-*\" (rule: subject)",
        "2. \"payments\": does not match: claim team is missing (rule: claims)",
        "3. \"deployers\": matches",
        "offers   logins deploy, agent-7; hosts *.prod.example.com; certificate TTL up to 5m",
        "grants   logins deploy, agent-7; hosts web-*.prod.example.com; certificate TTL 5m",
        "Decision: ALLOW by policy \"deployers\"",
        "Nothing was issued",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains(&token), "the token is never printed");
    assert!(setup.idp.requests() > 0, "the issuer's JWKS was fetched");
    setup.database_was_not_created();
}

#[test]
fn reports_a_login_not_granted() {
    let setup = Setup::new();
    // Token from stdin.
    let output = setup.explain(
        &[
            "--token",
            "-",
            "--logins",
            "root",
            "--hosts",
            "web-1.prod.example.com",
        ],
        &format!("{}\n", setup.token()),
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    for expected in [
        "3. \"deployers\": matches",
        "refuses  login_not_allowed: policy \"deployers\" does not grant login \"root\" (rule: logins)",
        "Decision: DENY (login_not_allowed): policy \"deployers\" does not grant login \"root\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // A longer certificate than the policy allows is refused, not clamped.
    let output = setup.explain(
        &[
            "--token",
            &setup.token(),
            "--logins",
            "deploy",
            "--ttl",
            "6m",
        ],
        "",
    );
    let text = stdout(&output);
    assert!(
        text.contains("Decision: DENY (ttl_exceeds_max)"),
        "{text}\n{}",
        stderr(&output)
    );
    setup.database_was_not_created();
}

#[test]
fn prints_json() {
    let setup = Setup::new();
    // The configuration from WRIT_CONFIG, the global flag's default.
    let mut command = writ();
    command
        .env("WRIT_CONFIG", &setup.config)
        .args(["admin", "policy", "explain", "--json", "--token", "-"])
        .args(["--logins", "deploy", "--hosts", "api.prod.example.com"]);
    let output = run(command, &setup.token());
    assert!(output.status.success(), "{}", stderr(&output));
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(json["token"]["status"], "verified");
    assert_eq!(json["token"]["issuer"], "test-idp");
    assert_eq!(json["token"]["subject"], "agent-7");
    assert_eq!(json["token"]["claims"]["kubernetes.io"]["namespace"], "ci");
    assert_eq!(json["request"]["logins"], json!(["deploy"]));
    let policies = json["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 3);
    assert_eq!(policies[0]["name"], "other-team");
    assert_eq!(policies[0]["status"], "no_match");
    assert_eq!(policies[0]["rule"], "subject");
    assert_eq!(policies[0]["mismatch"]["kind"], "subject");
    assert_eq!(policies[0]["mismatch"]["pattern"], "robot-*");
    assert_eq!(policies[1]["rule"], "claims");
    assert_eq!(policies[1]["mismatch"]["kind"], "claim_missing");
    assert_eq!(policies[1]["mismatch"]["path"], "team");
    assert_eq!(policies[2]["status"], "grants");
    assert_eq!(policies[2]["offer"]["logins"], json!(["deploy", "agent-7"]));
    assert_eq!(policies[2]["grant"]["cert_ttl_seconds"], 300);
    assert_eq!(policies[2]["grant"]["extensions"], json!(["permit-pty"]));
    assert_eq!(json["decision"]["result"], "allow");
    assert_eq!(json["decision"]["policy"], "deployers");
    assert!(
        json["checked_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 UTC: {}",
        json["checked_at"]
    );
    setup.database_was_not_created();
}

#[test]
fn an_expired_token_fails_with_the_reason() {
    let setup = Setup::new();
    let mut claims = setup.idp.claims("agent-7");
    let t = now();
    claims["iat"] = json!(t - 900);
    claims["nbf"] = json!(t - 900);
    claims["exp"] = json!(t - 600);
    let token = setup.idp.sign(Key::Rsa, &claims);
    let output = setup.explain(&["--token", &token, "--logins", "deploy"], "");
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}\n{}", stderr(&output));
    for expected in [
        "Token: REFUSED (token_expired): token has expired",
        "(configured issuer \"test-idp\")",
        "sub  agent-7",
        "No policy was evaluated",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // The expiry is shown relative to now: "10m ago", or "10m 1s ago" on a slow machine.
    let exp = text
        .lines()
        .find(|l| l.trim_start().starts_with("exp "))
        .unwrap_or_else(|| panic!("no exp line in:\n{text}"));
    assert!(exp.contains("(10m") && exp.ends_with(" ago)"), "{exp}");
    assert!(!text.contains(&token), "the token is never printed");

    let output = setup.explain(&["--json", "--token", &token], "");
    assert_eq!(output.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(json["token"]["status"], "refused");
    assert_eq!(json["token"]["code"], "token_expired");
    assert_eq!(json["policies"], json!([]));
    assert_eq!(json["decision"], Value::Null);
    setup.database_was_not_created();
}

#[test]
fn usage_errors_exit_non_zero() {
    let setup = Setup::new();
    // No configuration at all.
    let mut command = writ();
    command.args(["admin", "policy", "explain", "--token", "a.b.c"]);
    let output = run(command, "");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--config"), "{}", stderr(&output));
    // An empty token on stdin.
    let output = setup.explain(&["--token", "-"], "\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("empty"), "{}", stderr(&output));
    // A token the issuer never signed: refused, with the reason.
    let forged =
        common::idp::sign_with(Key::RsaOther, Key::Rsa.kid(), &setup.idp.claims("agent-7"));
    let output = setup.explain(&["--token", &forged], "");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains("REFUSED (bad_signature)"),
        "{}",
        stdout(&output)
    );
}

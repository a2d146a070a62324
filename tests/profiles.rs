//! The identity provider profiles in `contrib/identity/`, tested as shipped: each snippet
//! must be a valid configuration next to a `[ca]` section, and each one, pointed at a real
//! test IdP (only its `issuer` URL and key location replaced), must issue the expected
//! certificate for a token with that platform's real claim shape — and refuse a near miss.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::ca::{TestCa, certificate_request};
use common::idp::{Key, TestIdp};
use common::{now, public_key, ssh_keygen};
use serde_json::{Value, json};
use writ::config::{Config, Replay};

const KUBERNETES: &str = include_str!("../contrib/identity/kubernetes.toml");
const GITHUB_ACTIONS: &str = include_str!("../contrib/identity/github-actions.toml");
const SPIFFE: &str = include_str!("../contrib/identity/spiffe.toml");
const GENERIC_OIDC: &str = include_str!("../contrib/identity/generic-oidc.toml");

const PROFILES: &[(&str, &str, Replay)] = &[
    ("kubernetes.toml", KUBERNETES, Replay::Allow),
    ("github-actions.toml", GITHUB_ACTIONS, Replay::Reject),
    ("spiffe.toml", SPIFFE, Replay::Allow),
    ("generic-oidc.toml", GENERIC_OIDC, Replay::Reject),
];

const MINIMAL_CA: &str = "[ca]\npassphrase_file = \"/etc/writ/ca.pass\"\n\n";

#[test]
fn every_profile_is_a_valid_configuration() {
    for (name, text, replay) in PROFILES {
        let config = Config::parse(&format!("{MINIMAL_CA}{text}"), Path::new(name))
            .unwrap_or_else(|e| panic!("contrib/identity/{name}: {e}"));
        assert_eq!(config.issuers.len(), 1, "{name}");
        assert_eq!(config.issuers[0].replay, *replay, "{name}: replay");
        assert!(!config.policies.is_empty(), "{name}: has policies");
    }
    // Every profile shipped is tested here.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/identity");
    let mut shipped: Vec<String> = std::fs::read_dir(&dir)
        .expect("contrib/identity")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    shipped.sort();
    let mut tested: Vec<String> = PROFILES.iter().map(|(n, ..)| n.to_string()).collect();
    tested.sort();
    assert_eq!(shipped, tested);
}

/// A CA configured with `profile`, its issuer pointed at `idp`: `issuer` becomes the IdP's
/// URL and an explicit key location its JWKS URL (`discovery = true` stays: the test IdP
/// serves a discovery document). Policies are used exactly as shipped.
fn profile_ca(profile: &str, idp: &TestIdp) -> TestCa {
    let mut table: toml::Table = profile.parse().expect("profile TOML");
    for issuer in table
        .get_mut("issuer")
        .and_then(toml::Value::as_array_mut)
        .expect("[[issuer]]")
    {
        let issuer = issuer.as_table_mut().expect("issuer table");
        issuer.insert("issuer".into(), idp.issuer.clone().into());
        if issuer.remove("jwks_url").is_some() || issuer.remove("jwks_file").is_some() {
            issuer.insert("jwks_url".into(), idp.jwks_url().into());
        }
    }
    TestCa::start("", &toml::to_string(&table).expect("TOML"))
}

struct Agent {
    _dir: tempfile::TempDir,
    public_key: String,
}

fn agent() -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ssh_keygen(dir.path(), "agent", &["-t", "ed25519"]);
    Agent {
        public_key: public_key(&key),
        _dir: dir,
    }
}

/// Ask `ca` for a certificate; on 201, check it carries `login` and return the body.
fn request(
    ca: &TestCa,
    agent: &Agent,
    token: &str,
    login: &str,
    host: &str,
) -> Result<Value, (u16, String)> {
    let response = ca.request_certificate(
        Some(token),
        &certificate_request(&agent.public_key, &[login], &[host], Some(120)),
    );
    if response.status != 201 {
        return Err((response.status, response.error_code()));
    }
    let body = response.json();
    let principals = body["principals"].as_array().expect("principals");
    assert_eq!(principals.len(), 1, "{body}");
    let principal = principals[0].as_str().expect("principal");
    assert!(
        principal.starts_with("writ:") && principal.ends_with(&format!(":{login}")),
        "{principal}"
    );
    assert!(
        body["certificate"]
            .as_str()
            .is_some_and(|c| c.starts_with("ssh-ed25519-cert-v01@openssh.com ")),
        "{body}"
    );
    Ok(body)
}

fn denied(code: &str) -> Result<Value, (u16, String)> {
    Err((403, code.to_owned()))
}

fn unauthorized(code: &str) -> Result<Value, (u16, String)> {
    Err((401, code.to_owned()))
}

/// `writ admin policy explain` (the real binary) on `ca`'s configuration file; its stdout.
fn explain(ca: &TestCa, token: &str, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_writ"))
        .env_remove("WRIT_CONFIG")
        .arg("admin")
        .arg("--config")
        .arg(ca.dir().join("writ.toml"))
        .args(["policy", "explain", "--token", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run writ");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(token.as_bytes())
        .expect("write token");
    let output = child.wait_with_output().expect("wait for writ");
    let stdout = String::from_utf8(output.stdout).expect("utf8");
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A projected service-account token as the kubelet mounts it.
fn kubernetes_claims(idp: &TestIdp, namespace: &str, account: &str, lifetime: i64) -> Value {
    let mut claims = idp.claims(&format!("system:serviceaccount:{namespace}:{account}"));
    let iat = now();
    claims["aud"] = json!(["writ"]);
    claims["iat"] = json!(iat);
    claims["nbf"] = json!(iat);
    claims["exp"] = json!(iat + lifetime);
    claims["kubernetes.io"] = json!({
        "namespace": namespace,
        "serviceaccount": {"name": account, "uid": "5b1c2f0e-2a7d-4c59-9d57-0c1c8f1e2a11"},
        "pod": {"name": format!("{account}-7c9d8b5f4-x2x9q"), "uid": "0d5f1d9e-8c1a-4bde-a0a5-8b3c7f6e9d21"},
        "node": {"name": "node-1", "uid": "c3f0a5b2-1e4d-4f7a-9b8c-2d6e0f1a3b5c"},
    });
    claims
}

#[test]
fn kubernetes_projected_service_account_tokens() {
    let idp = TestIdp::start(&[Key::Rsa, Key::Ec]);
    let ca = profile_ca(KUBERNETES, &idp);
    let agent = agent();
    let host = "web-01.prod.example.com";

    let token = idp.sign(Key::Rsa, &kubernetes_claims(&idp, "ci", "deployer", 3600));
    request(&ca, &agent, &token, "deploy", host).expect("ci/deployer gets deploy");
    // `policy explain` on the same configuration agrees (and prints what the README shows).
    let explained = explain(&ca, &token, &["--logins", "deploy", "--hosts", host]);
    for expected in [
        "  subject  system:serviceaccount:ci:deployer",
        "  kubernetes.io.serviceaccount.name  \"deployer\"",
        "1. \"k8s-ci-deployer\": matches",
        "offers   logins deploy; hosts *.prod.example.com; certificate TTL up to 5m; task TTL up to 1h; extensions permit-pty",
        "grants   logins deploy; hosts web-01.prod.example.com; certificate TTL 5m; task TTL 1h; extensions permit-pty",
        "2. \"k8s-ops-agents\": does not match: subject \"system:serviceaccount:ci:deployer\" does not match \"system:serviceaccount:ops-agents:*\" (rule: subject)",
        "Decision: ALLOW by policy \"k8s-ci-deployer\"",
    ] {
        assert!(
            explained.contains(expected),
            "missing {expected:?} in:\n{explained}"
        );
    }
    // The kubelet hands out one token per hour: replay = "allow" lets it be reused.
    request(&ca, &agent, &token, "deploy", host).expect("same token again");
    // A few seconds over the hour (kubelet jitter, 3607 s tokens) fit in the leeway.
    let token = idp.sign(Key::Ec, &kubernetes_claims(&idp, "ci", "deployer", 3607));
    request(&ca, &agent, &token, "deploy", host).expect("3607 s token");
    // Another namespace's account of the same name matches no policy.
    let token = idp.sign(Key::Rsa, &kubernetes_claims(&idp, "dev", "deployer", 3600));
    assert_eq!(
        request(&ca, &agent, &token, "deploy", host),
        denied("no_matching_policy")
    );
    // The right namespace but another service account: not the deployer policy.
    let token = idp.sign(Key::Rsa, &kubernetes_claims(&idp, "ci", "builder", 3600));
    assert_eq!(
        request(&ca, &agent, &token, "deploy", host),
        denied("no_matching_policy")
    );
    // Any account in ops-agents may observe, and only observe.
    let token = idp.sign(
        Key::Rsa,
        &kubernetes_claims(&idp, "ops-agents", "watcher", 3600),
    );
    request(&ca, &agent, &token, "observer", "db-1.example.com").expect("observer");
    assert_eq!(
        request(&ca, &agent, &token, "deploy", host),
        denied("login_not_allowed")
    );
    // Tokens living longer than max_token_lifetime (+ leeway) are refused.
    let token = idp.sign(Key::Rsa, &kubernetes_claims(&idp, "ci", "deployer", 7200));
    assert_eq!(
        request(&ca, &agent, &token, "deploy", host),
        unauthorized("token_lifetime_too_long")
    );
}

/// A GitHub Actions OIDC token for a push to `git_ref` of `repository`.
fn github_claims(
    idp: &TestIdp,
    repository: &str,
    repository_id: Value,
    git_ref: &str,
    workflow_ref: &str,
) -> Value {
    let owner = repository.split('/').next().expect("owner");
    let mut claims = idp.claims(&format!("repo:{repository}:ref:{git_ref}"));
    let iat = now();
    claims["iat"] = json!(iat);
    claims["nbf"] = json!(iat - 60);
    claims["exp"] = json!(iat + 300);
    for (name, value) in [
        ("repository", json!(repository)),
        ("repository_owner", json!(owner)),
        ("repository_owner_id", json!("4242")),
        ("repository_id", repository_id),
        ("repository_visibility", json!("private")),
        ("ref", json!(git_ref)),
        ("ref_type", json!("branch")),
        ("sha", json!("6ba8d0c1f5e2a7b3c4d9e0f1a2b3c4d5e6f7a8b9")),
        ("job_workflow_ref", json!(workflow_ref)),
        ("workflow", json!("deploy")),
        ("event_name", json!("push")),
        ("actor", json!("octocat")),
        ("actor_id", json!("583231")),
        ("run_id", json!("9876543210")),
        ("run_number", json!("17")),
        ("run_attempt", json!("1")),
        ("runner_environment", json!("github-hosted")),
    ] {
        claims[name] = value;
    }
    claims
}

#[test]
fn github_actions_oidc_tokens() {
    let idp = TestIdp::start(&[Key::Rsa]);
    let ca = profile_ca(GITHUB_ACTIONS, &idp);
    let agent = agent();
    let host = "web-01.prod.example.com";
    let deploy_workflow = "acme/webapp/.github/workflows/deploy.yml@refs/heads/main";

    // repository_id as GitHub sends it (a string of digits) and as a JSON number: the
    // policy's glob is compared with the text form either way.
    for repository_id in [json!("123456789"), json!(123_456_789)] {
        let claims = github_claims(
            &idp,
            "acme/webapp",
            repository_id,
            "refs/heads/main",
            deploy_workflow,
        );
        let token = idp.sign(Key::Rsa, &claims);
        request(&ca, &agent, &token, "deploy", host).expect("main-branch deploy");
        // replay = "reject": each job step asks for a fresh token; a reused one is refused.
        assert_eq!(
            request(&ca, &agent, &token, "deploy", host),
            unauthorized("token_replayed")
        );
    }
    // Near misses: a re-created repository with the same name, another branch.
    let recreated = github_claims(
        &idp,
        "acme/webapp",
        json!("987654321"),
        "refs/heads/main",
        deploy_workflow,
    );
    assert_eq!(
        request(&ca, &agent, &idp.sign(Key::Rsa, &recreated), "deploy", host),
        denied("no_matching_policy")
    );
    let branch = github_claims(
        &idp,
        "acme/webapp",
        json!("123456789"),
        "refs/heads/feature",
        "acme/webapp/.github/workflows/deploy.yml@refs/heads/feature",
    );
    assert_eq!(
        request(&ca, &agent, &idp.sign(Key::Rsa, &branch), "deploy", host),
        denied("no_matching_policy")
    );

    // Org-wide: the shared workflow at a release tag gets a login named after the owner.
    let shared = "acme/shared-workflows/.github/workflows/ssh-task.yml@refs/tags/v1.4.0";
    let tools = github_claims(&idp, "acme/tools", json!("555"), "refs/heads/main", shared);
    request(
        &ca,
        &agent,
        &idp.sign(Key::Rsa, &tools),
        "ci-acme",
        "build-1.ci.example.com",
    )
    .expect("templated owner login");
    let untagged = github_claims(
        &idp,
        "acme/tools",
        json!("555"),
        "refs/heads/main",
        "acme/shared-workflows/.github/workflows/ssh-task.yml@refs/heads/main",
    );
    assert_eq!(
        request(
            &ca,
            &agent,
            &idp.sign(Key::Rsa, &untagged),
            "ci-acme",
            "build-1.ci.example.com"
        ),
        denied("no_matching_policy")
    );
}

/// A JWT-SVID as the SPIRE Workload API returns it (no `jti`, no `nbf`).
fn svid_claims(idp: &TestIdp, spiffe_id: &str) -> Value {
    let iat = now();
    json!({
        "iss": idp.issuer, "sub": spiffe_id, "aud": ["writ"],
        "iat": iat, "exp": iat + 300,
    })
}

#[test]
fn spiffe_jwt_svids() {
    let idp = TestIdp::start(&[Key::Ec]);
    let ca = profile_ca(SPIFFE, &idp);
    let agent = agent();
    let host = "web-01.prod.example.com";

    let token = idp.sign(
        Key::Ec,
        &svid_claims(&idp, "spiffe://example.org/ns/prod/sa/deployer"),
    );
    request(&ca, &agent, &token, "deploy", host).expect("prod deployer");
    // The Workload API caches SVIDs: the same one is presented again.
    request(&ca, &agent, &token, "deploy", host).expect("cached SVID again");
    for near_miss in [
        "spiffe://example.org/ns/staging/sa/deployer",
        "spiffe://evil.example/ns/prod/sa/deployer",
        "spiffe://example.org/ns/prod/sa/deployer/extra",
    ] {
        let token = idp.sign(Key::Ec, &svid_claims(&idp, near_miss));
        assert_eq!(
            request(&ca, &agent, &token, "deploy", host),
            denied("no_matching_policy"),
            "{near_miss}"
        );
    }
    // Without the SPIRE server's jwt_issuer, SVIDs carry no iss and are refused.
    let mut claims = svid_claims(&idp, "spiffe://example.org/ns/prod/sa/deployer");
    claims.as_object_mut().expect("object").remove("iss");
    assert_eq!(
        request(&ca, &agent, &idp.sign(Key::Ec, &claims), "deploy", host),
        unauthorized("bad_claim")
    );
}

/// A client-credentials access token from a generic OIDC provider.
fn oidc_claims(idp: &TestIdp, groups: &[&str], aud: Value) -> Value {
    let mut claims = idp.claims("service-account-agent-runner-ci");
    claims["aud"] = aud;
    claims["azp"] = json!("agent-runner-ci");
    claims["typ"] = json!("Bearer");
    claims["scope"] = json!("openid profile");
    claims["groups"] = json!(groups);
    claims["realm_access"] = json!({"roles": ["offline_access"]});
    claims
}

#[test]
fn generic_oidc_tokens() {
    let idp = TestIdp::start(&[Key::Rsa, Key::Ed25519]);
    let ca = profile_ca(GENERIC_OIDC, &idp);
    let agent = agent();
    let host = "app-1.staging.example.com";

    for key in [Key::Rsa, Key::Ed25519] {
        let claims = oidc_claims(
            &idp,
            &["everyone", "ssh-agents"],
            json!(["writ", "account"]),
        );
        let token = idp.sign(key, &claims);
        request(&ca, &agent, &token, "agent", host).expect("ssh-agents member");
    }
    // Not in the group; or a token meant for another audience.
    let outsider = oidc_claims(&idp, &["everyone"], json!("writ"));
    assert_eq!(
        request(&ca, &agent, &idp.sign(Key::Rsa, &outsider), "agent", host),
        denied("no_matching_policy")
    );
    let elsewhere = oidc_claims(&idp, &["ssh-agents"], json!("account"));
    assert_eq!(
        request(&ca, &agent, &idp.sign(Key::Rsa, &elsewhere), "agent", host),
        unauthorized("wrong_audience")
    );
    // Production hosts are not in this profile's policy.
    let member = oidc_claims(&idp, &["ssh-agents"], json!("writ"));
    assert_eq!(
        request(
            &ca,
            &agent,
            &idp.sign(Key::Rsa, &member),
            "agent",
            "web-01.prod.example.com"
        ),
        denied("host_not_allowed")
    );
}

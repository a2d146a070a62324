//! `writ check-config --config FILE`: is this configuration ready to serve, and is any of
//! it risky? Run it before deploying a change.
//!
//! 1. The file is parsed and validated by [`Config::load`], exactly as `writ serve` does;
//!    an invalid file is an error naming the file and the key (exit 1).
//! 2. What the file points at outside itself is resolved, as `writ serve` would at start:
//!    each issuer's keys (its `jwks_url` or discovery document fetched within `--timeout`,
//!    or its `jwks_file` read) and the CA passphrase's source (its file readable and not
//!    empty, or `WRIT_CA_PASSPHRASE` set; never printed). These are often only reachable
//!    from the CA host, so a failure is a warning, not an error (`--offline` skips them).
//! 3. Each policy's effective grant is shown: who it matches, the logins and host
//!    patterns it grants, and its lifetimes once capped by `[ca]`.
//! 4. Risky patterns are warnings ([`risks`], a pure function of the configuration):
//!    wide host patterns, `root` or templated logins without claim constraints, an
//!    unconstrained subject, lifetimes above the recommendations below, `replay = "allow"`
//!    with long-lived tokens, and plain HTTP on a non-loopback address.
//!
//! Warnings never change the exit status: 0 when the file is valid. It writes nothing and
//! opens no store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{AdminError, Render, Status, emit, pretty};
use crate::config::{Config, ConfigError, PolicyConfig, Replay, Role};
use crate::identity::jwks::JwksSource;
use crate::policy::{Policies, role_name};
use crate::{duration, glob};

/// Longest certificate lifetime recommended: certificates are meant to be minute-scale,
/// and a stolen one works until it expires (revocation reaches hosts only as fast as they
/// sync).
pub const RECOMMENDED_MAX_CERT_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest task recommended: a working day. A task that outlives the work it was opened
/// for is standing access.
pub const RECOMMENDED_MAX_TASK_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Longest workload token recommended: a stolen token opens tasks until it expires.
pub const RECOMMENDED_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Longest token lifetime with `replay = "allow"` that is not flagged: a token reusable for
/// its whole life should live minutes (Kubernetes accepts 10 minutes as its shortest).
pub const REPLAY_ALLOW_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// `writ check-config` options.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check the file alone: neither fetch nor read the issuers' keys, and do not look for
    /// the CA passphrase.
    #[arg(long)]
    pub offline: bool,
    /// How long to wait for each issuer's keys.
    #[arg(long, default_value = "5s", value_parser = duration::parse, value_name = "DURATION")]
    pub timeout: Duration,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The file checked.
    pub config: PathBuf,
    /// Whether it parses and validates as `writ serve` requires.
    pub valid: bool,
    /// Why not (file and key named), when not valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Each issuer and its key source.
    pub issuers: Vec<IssuerReport>,
    /// Each policy's effective grant, in order.
    pub policies: Vec<PolicyReport>,
    /// Risky patterns and unresolved sources.
    pub warnings: Vec<Warning>,
}

/// One `[[issuer]]` and what its key source gave.
#[derive(Debug, Clone, Serialize)]
pub struct IssuerReport {
    /// Configured name.
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// `jwks_url`, `jwks_file`, or the discovery URL.
    pub key_source: String,
    /// `ok`, `failed` or `not_checked` (`--offline`).
    pub keys: &'static str,
    /// Usable keys found, when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_count: Option<usize>,
    /// Why not, when `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One `[[policy]]` as it takes effect.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// Name.
    pub name: String,
    /// The issuer it applies to.
    pub issuer: String,
    /// `agent`, `admin` or `host`.
    pub role: &'static str,
    /// Glob on `sub`.
    pub subject: String,
    /// Claim constraints (dotted path → glob).
    pub claims: std::collections::BTreeMap<String, String>,
    /// Login patterns (templates unfilled).
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Longest certificate, capped by `[ca] max_cert_ttl`, in seconds.
    pub max_cert_ttl_seconds: u64,
    /// Longest task, capped by `[ca] max_task_ttl`, in seconds.
    pub max_task_ttl_seconds: u64,
    /// Extensions granted.
    pub extensions: Vec<String>,
    /// `force-command`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_command: Option<String>,
    /// `source-address`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_address: Option<Vec<String>>,
}

/// Something risky, or something the file points at that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Stable snake_case code, e.g. `wide_host_pattern`.
    pub code: &'static str,
    /// The configuration key it is about, e.g. `policy[0] ("ci").hosts[1]`.
    pub key: String,
    /// What is risky and what to do.
    pub message: String,
}

impl Warning {
    fn new(code: &'static str, key: impl Into<String>, message: impl Into<String>) -> Warning {
        Warning {
            code,
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Run `writ check-config` from the command line: check the file, print the report on
/// stdout. Text mode turns an invalid file into the error (`writ: error: FILE: KEY: …`);
/// `--json` prints it in the report. Either way an invalid file is exit 1.
pub fn main(config_path: Option<&Path>, args: &CheckConfigArgs) -> Result<Status, AdminError> {
    let path = config_path.ok_or(AdminError::NoConfig)?;
    let mut out = std::io::stdout().lock();
    run(path, args, &mut out)
}

/// Check `path` with `args`, writing the report to `out`.
pub fn run(path: &Path, args: &CheckConfigArgs, out: &mut dyn Write) -> Result<Status, AdminError> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) if args.json => {
            emit(out, &Report::invalid(path, &error), true)?;
            return Ok(Status::Failure);
        }
        Err(error) => return Err(error.into()),
    };
    emit(out, &check(path, &config, args), args.json)?;
    Ok(Status::Success)
}

/// The report on a valid `config` read from `path`.
pub fn check(path: &Path, config: &Config, args: &CheckConfigArgs) -> Report {
    let mut warnings = Vec::new();
    let issuers = config
        .issuers
        .iter()
        .enumerate()
        .map(|(i, issuer)| {
            let source = JwksSource::from_config(issuer);
            let mut report = IssuerReport {
                name: issuer.name.clone(),
                issuer: issuer.issuer.clone(),
                key_source: source.describe(),
                keys: "not_checked",
                key_count: None,
                error: None,
            };
            if args.offline {
                return report;
            }
            match source.load_within(args.timeout) {
                Ok(set) => {
                    let usable = set
                        .keys
                        .iter()
                        .filter(|jwk| jsonwebtoken::DecodingKey::from_jwk(jwk).is_ok())
                        .count();
                    report.keys = "ok";
                    report.key_count = Some(usable);
                    if usable == 0 {
                        warnings.push(Warning::new(
                            "issuer_keys_unavailable",
                            format!("issuer[{i}] ({:?})", issuer.name),
                            format!(
                                "{} holds no usable key: every token of this issuer is refused",
                                report.key_source
                            ),
                        ));
                    }
                }
                Err(error) => {
                    report.keys = "failed";
                    warnings.push(Warning::new(
                        "issuer_keys_unavailable",
                        format!("issuer[{i}] ({:?})", issuer.name),
                        format!(
                            "keys not loaded ({error}); writ serve starts, but refuses this \
                             issuer's tokens (503 issuer_unavailable) until they load"
                        ),
                    ));
                    report.error = Some(error);
                }
            }
            report
        })
        .collect();
    if !args.offline
        && let Err(error) = config.ca_passphrase(path)
    {
        warnings.push(Warning::new(
            "passphrase_unavailable",
            "ca.passphrase_file",
            format!("{error}; writ serve refuses to start without it"),
        ));
    }
    warnings.extend(risks(config));
    let policies = Policies::new(config.policies.clone(), config.ca.clone());
    Report {
        config: path.to_owned(),
        valid: true,
        error: None,
        issuers,
        policies: config
            .policies
            .iter()
            .map(|policy| effective(&policies, policy))
            .collect(),
        warnings,
    }
}

impl Report {
    fn invalid(path: &Path, error: &ConfigError) -> Report {
        Report {
            config: path.to_owned(),
            valid: false,
            error: Some(error.to_string()),
            issuers: Vec::new(),
            policies: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

fn effective(policies: &Policies, policy: &PolicyConfig) -> PolicyReport {
    let (cert, task) = policies.max_ttls(policy);
    PolicyReport {
        name: policy.name.clone(),
        issuer: policy.issuer.clone(),
        role: role_name(policy.role),
        subject: policy.subject.clone(),
        claims: policy.claims.clone(),
        logins: policy.logins.clone(),
        hosts: policy.hosts.clone(),
        max_cert_ttl_seconds: cert.as_secs(),
        max_task_ttl_seconds: task.as_secs(),
        extensions: policy.extensions.clone(),
        force_command: policy.force_command.clone(),
        source_address: policy.source_address.clone(),
    }
}

/// The risky patterns in `config` (see the module documentation), in file order.
pub fn risks(config: &Config) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let server = &config.server;
    if !server.listen.ip().is_loopback() && server.tls_cert.is_none() {
        warnings.push(Warning::new(
            "plaintext_listen",
            "server.listen",
            format!(
                "{} is not loopback and serves plain HTTP: bearer tokens and certificates \
                 cross the network unencrypted; serve TLS or keep writ on loopback behind a \
                 TLS-terminating proxy",
                server.listen
            ),
        ));
    }
    if let Some(metrics) = server.metrics_listen
        && !metrics.ip().is_loopback()
    {
        warnings.push(Warning::new(
            "plaintext_metrics_listen",
            "server.metrics_listen",
            format!(
                "{metrics} is not loopback: /metrics (plain HTTP, no authentication) shows \
                 anyone who can reach it the issuers, sinks, refusals and traffic; firewall it \
                 to the Prometheus server"
            ),
        ));
    }
    let over = |key: &str, value: Duration, recommended: Duration, why: &str| {
        (value > recommended).then(|| {
            Warning::new(
                "ttl_above_recommendation",
                key,
                format!(
                    "{} is above the recommended {}: {why}",
                    duration::format(value),
                    duration::format(recommended)
                ),
            )
        })
    };
    warnings.extend(over(
        "ca.max_cert_ttl",
        config.ca.max_cert_ttl,
        RECOMMENDED_MAX_CERT_TTL,
        "certificates are meant to be minute-scale; a stolen one works until it expires",
    ));
    warnings.extend(over(
        "ca.max_task_ttl",
        config.ca.max_task_ttl,
        RECOMMENDED_MAX_TASK_TTL,
        "a task that outlives its work is standing access",
    ));
    for (i, issuer) in config.issuers.iter().enumerate() {
        let key = |field: &str| format!("issuer[{i}] ({:?}).{field}", issuer.name);
        let lifetime = issuer.max_token_lifetime;
        warnings.extend(over(
            &key("max_token_lifetime"),
            lifetime,
            RECOMMENDED_MAX_TOKEN_LIFETIME,
            "a stolen token opens tasks until it expires",
        ));
        if issuer.replay == Replay::Allow && lifetime > REPLAY_ALLOW_MAX_TOKEN_LIFETIME {
            warnings.push(Warning::new(
                "replay_allow_long_tokens",
                key("replay"),
                format!(
                    "replay = \"allow\" with max_token_lifetime = {}: one stolen token opens \
                     any number of tasks for that long; keep tokens at most {} (e.g. \
                     Kubernetes expirationSeconds: 600) or use replay = \"reject\"",
                    duration::format(lifetime),
                    duration::format(REPLAY_ALLOW_MAX_TOKEN_LIFETIME)
                ),
            ));
        }
    }
    for (i, policy) in config.policies.iter().enumerate() {
        policy_risks(i, policy, &mut warnings);
    }
    warnings
}

fn policy_risks(i: usize, policy: &PolicyConfig, warnings: &mut Vec<Warning>) {
    let key = |field: &str| format!("policy[{i}] ({:?}).{field}", policy.name);
    let unconstrained = policy.claims.is_empty();
    if unconstrained && policy.subject.trim_matches('*').is_empty() {
        warnings.push(Warning::new(
            "unconstrained_subject",
            key("subject"),
            format!(
                "subject {:?} and no claims: every identity issuer {:?} vouches for matches \
                 (on a shared platform such as GitHub Actions, everyone's workloads); pin the \
                 subject or constrain claims",
                policy.subject, policy.issuer
            ),
        ));
    }
    if policy.role != Role::Admin {
        for (j, host) in policy.hosts.iter().enumerate() {
            if is_wide_host_pattern(host) {
                warnings.push(Warning::new(
                    "wide_host_pattern",
                    format!("{}[{j}]", key("hosts")),
                    format!(
                        "{host:?} does not pin a domain: it matches hosts in any zone; name \
                         them under your own domain, e.g. \"*.prod.example.com\""
                    ),
                ));
            }
        }
    }
    if !unconstrained {
        return;
    }
    for (j, login) in policy.logins.iter().enumerate() {
        let at = format!("{}[{j}]", key("logins"));
        if glob::matches(login, "root") {
            warnings.push(Warning::new(
                "root_login_unconstrained",
                at,
                format!(
                    "{login:?} admits root and the policy constrains no claims: any identity \
                     matching subject {:?} may log in as root; add claims, or grant a \
                     non-root login",
                    policy.subject
                ),
            ));
        } else if login.contains('{') {
            warnings.push(Warning::new(
                "templated_login_unconstrained",
                at,
                format!(
                    "{login:?} is filled from the token and the policy constrains no claims: \
                     whoever the issuer vouches for under subject {:?} picks the login; add \
                     claims that pin whose tokens these are",
                    policy.subject
                ),
            ));
        }
    }
}

/// A host pattern with a wildcard whose fixed tail names less than a domain and its zone
/// (`*`, `*.com`, `web-*`): it matches hosts anywhere.
fn is_wide_host_pattern(pattern: &str) -> bool {
    match pattern.rfind('*') {
        Some(star) => pattern[star + 1..].matches('.').count() < 2,
        None => false,
    }
}

impl Render for Report {
    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let file = self.config.display();
        if let Some(error) = &self.error {
            let _ = writeln!(out, "{file}: INVALID: {error}");
            return out;
        }
        let _ = writeln!(out, "{file}: valid");
        let _ = writeln!(out, "\nissuers:");
        if self.issuers.is_empty() {
            let _ = writeln!(out, "  (none: every token is refused)");
        }
        for issuer in &self.issuers {
            let keys = match (issuer.keys, issuer.key_count, &issuer.error) {
                ("ok", Some(n), _) => format!("{n} usable key(s)"),
                ("failed", _, Some(e)) => format!("FAILED: {e}"),
                _ => "not checked".to_owned(),
            };
            let _ = writeln!(out, "  {} ({})", issuer.name, issuer.issuer);
            let _ = writeln!(out, "    keys from {}: {keys}", issuer.key_source);
        }
        let _ = writeln!(
            out,
            "\npolicies (first match that grants the request wins):"
        );
        if self.policies.is_empty() {
            let _ = writeln!(out, "  (none: every certificate request is refused)");
        }
        for policy in &self.policies {
            let _ = writeln!(
                out,
                "  {} (issuer {}, role {})",
                policy.name, policy.issuer, policy.role
            );
            let _ = writeln!(out, "    subject     {}", policy.subject);
            let claims = policy
                .claims
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>();
            let _ = writeln!(out, "    claims      {}", list(&claims));
            let _ = writeln!(out, "    logins      {}", list(&policy.logins));
            let _ = writeln!(out, "    hosts       {}", list(&policy.hosts));
            let _ = writeln!(
                out,
                "    lifetimes   certificates up to {}, tasks up to {}",
                duration::format(Duration::from_secs(policy.max_cert_ttl_seconds)),
                duration::format(Duration::from_secs(policy.max_task_ttl_seconds))
            );
            let _ = writeln!(out, "    extensions  {}", list(&policy.extensions));
            if let Some(command) = &policy.force_command {
                let _ = writeln!(out, "    force-command {command}");
            }
            if let Some(addresses) = &policy.source_address {
                let _ = writeln!(out, "    source-address {}", addresses.join(","));
            }
        }
        if self.warnings.is_empty() {
            let _ = writeln!(out, "\nno warnings");
        } else {
            let _ = writeln!(out, "\nwarnings ({}):", self.warnings.len());
            for warning in &self.warnings {
                let _ = writeln!(
                    out,
                    "  WARNING [{}] {}: {}",
                    warning.code, warning.key, warning.message
                );
            }
        }
        out
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[ca]
passphrase_file = "/nonexistent/ca.pass"

[[issuer]]
name = "k8s"
issuer = "https://k8s.example"
jwks_file = "/nonexistent/jwks.json"
audiences = ["writ"]

[[policy]]
name = "ci"
issuer = "k8s"
subject = "system:serviceaccount:ci:deployer"
claims = { "kubernetes.io.namespace" = "ci" }
logins = ["deploy"]
hosts = ["*.prod.example.com", "db-01.example.com"]
"#;

    fn codes(text: &str) -> Vec<(&'static str, String)> {
        let config = Config::parse(text, Path::new("writ.toml")).expect("valid");
        risks(&config)
            .into_iter()
            .map(|w| (w.code, w.key))
            .collect()
    }

    #[test]
    fn a_tight_configuration_has_no_risks() {
        assert_eq!(codes(BASE), []);
    }

    #[test]
    fn wide_host_patterns_are_flagged() {
        for (pattern, wide) in [
            ("*", true),
            ("*.com", true),
            ("web-*", true),
            ("*-01", true),
            ("*.example.com", false),
            ("web-*.prod.example.com", false),
            ("web-01", false),
        ] {
            assert_eq!(is_wide_host_pattern(pattern), wide, "{pattern}");
        }
        let text = BASE.replace("\"db-01.example.com\"", "\"*\"");
        assert_eq!(
            codes(&text),
            [(
                "wide_host_pattern",
                "policy[0] (\"ci\").hosts[1]".to_owned()
            )]
        );
    }

    #[test]
    fn root_and_templated_logins_need_claim_constraints() {
        let unconstrained = BASE.replace("claims = { \"kubernetes.io.namespace\" = \"ci\" }\n", "");
        for (logins, code) in [
            ("[\"root\"]", "root_login_unconstrained"),
            ("[\"*\"]", "root_login_unconstrained"),
            ("[\"{sub}\"]", "templated_login_unconstrained"),
            (
                "[\"gh-{claims.repository_owner}\"]",
                "templated_login_unconstrained",
            ),
        ] {
            let text = unconstrained.replace("[\"deploy\"]", logins);
            assert_eq!(
                codes(&text),
                [(code, "policy[0] (\"ci\").logins[0]".to_owned())],
                "{logins}"
            );
            // With a claim constraint, the same logins are not flagged.
            assert_eq!(codes(&BASE.replace("[\"deploy\"]", logins)), [], "{logins}");
        }
    }

    #[test]
    fn an_unconstrained_subject_is_flagged() {
        let text = BASE
            .replace("claims = { \"kubernetes.io.namespace\" = \"ci\" }\n", "")
            .replace("\"system:serviceaccount:ci:deployer\"", "\"*\"");
        assert_eq!(
            codes(&text),
            [(
                "unconstrained_subject",
                "policy[0] (\"ci\").subject".to_owned()
            )]
        );
    }

    #[test]
    fn lifetimes_above_the_recommendations_name_the_key() {
        let text = BASE.replace(
            "[ca]\n",
            "[ca]\nmax_cert_ttl = \"1h\"\nmax_task_ttl = \"1d\"\n",
        );
        let text = text.replace(
            "audiences = [\"writ\"]",
            "audiences = [\"writ\"]\nmax_token_lifetime = \"2h\"",
        );
        let config = Config::parse(&text, Path::new("writ.toml")).expect("valid");
        let found = risks(&config);
        let keys: Vec<&str> = found.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "ca.max_cert_ttl",
                "ca.max_task_ttl",
                "issuer[0] (\"k8s\").max_token_lifetime"
            ]
        );
        assert!(found.iter().all(|w| w.code == "ttl_above_recommendation"));
        assert!(found[0].message.contains("1h") && found[0].message.contains("15m"));
    }

    #[test]
    fn replay_allow_needs_short_tokens() {
        let allow = |lifetime: &str| {
            BASE.replace(
                "audiences = [\"writ\"]",
                &format!("audiences = [\"writ\"]\nreplay = \"allow\"\nmax_token_lifetime = \"{lifetime}\""),
            )
        };
        assert_eq!(
            codes(&allow("1h")),
            [(
                "replay_allow_long_tokens",
                "issuer[0] (\"k8s\").replay".to_owned()
            )]
        );
        assert_eq!(codes(&allow("10m")), []);
    }

    #[test]
    fn plain_http_beyond_loopback_is_flagged() {
        let text = format!("[server]\nmetrics_listen = \"0.0.0.0:9422\"\n{BASE}");
        assert_eq!(
            codes(&text),
            [(
                "plaintext_metrics_listen",
                "server.metrics_listen".to_owned()
            )]
        );
        // `writ serve` refuses a non-loopback listen today; the check stands for when a
        // configuration can serve one (TLS, or a proxy on the host).
        let mut config = Config::parse(BASE, Path::new("writ.toml")).expect("valid");
        config.server.listen = "192.0.2.1:8422".parse().expect("addr");
        let found = risks(&config);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].code, found[0].key.as_str()),
            ("plaintext_listen", "server.listen")
        );
    }

    #[test]
    fn an_invalid_file_is_exit_1_with_file_and_key_and_json_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.toml");
        std::fs::write(&path, BASE.replace("\"deploy\"", "\"Deploy\"")).expect("write");
        let args = CheckConfigArgs {
            json: false,
            offline: true,
            timeout: Duration::from_secs(1),
        };
        let error = run(&path, &args, &mut Vec::new()).expect_err("invalid");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains("policy[0] (\"ci\").logins[0]"),
            "{message}"
        );

        let mut out = Vec::new();
        let json = CheckConfigArgs { json: true, ..args };
        assert_eq!(
            run(&path, &json, &mut out).expect("report"),
            Status::Failure
        );
        let report: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(report["valid"], false);
        assert!(
            report["error"]
                .as_str()
                .is_some_and(|e| e.contains("logins[0]")),
            "{report}"
        );
    }

    #[test]
    fn a_valid_file_shows_effective_grants_and_unresolved_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.toml");
        std::fs::write(
            &path,
            BASE.replace("[ca]\n", "[ca]\nmax_cert_ttl = \"4m\"\n"),
        )
        .expect("write");
        let args = CheckConfigArgs {
            json: true,
            offline: false,
            timeout: Duration::from_secs(1),
        };
        let mut out = Vec::new();
        assert_eq!(
            run(&path, &args, &mut out).expect("report"),
            Status::Success
        );
        let report: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(report["valid"], true);
        let policy = &report["policies"][0];
        assert_eq!(policy["max_cert_ttl_seconds"], 240, "{report}");
        assert_eq!(policy["max_task_ttl_seconds"], 8 * 3600, "{report}");
        assert_eq!(report["issuers"][0]["keys"], "failed");
        let codes: Vec<&str> = report["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .filter_map(|w| w["code"].as_str())
            .collect();
        assert_eq!(codes, ["issuer_keys_unavailable", "passphrase_unavailable"]);
    }
}

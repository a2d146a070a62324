//! Policies: which verified identities may open tasks with which logins, host patterns,
//! lifetimes, extensions and critical options. A request gets exactly what it asks for or
//! a refusal that names the policy rule — never a silent clamp.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cidr::Cidr;
use crate::config::{CaConfig, PolicyConfig, Role};
use crate::identity::Identity;
use crate::{glob, profile};

/// What a request asks for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Logins for the task.
    pub logins: Vec<String>,
    /// Host patterns for the task.
    pub hosts: Vec<String>,
    /// Explicit task lifetime, if any.
    pub task_ttl: Option<Duration>,
    /// Explicit certificate lifetime, if any.
    pub cert_ttl: Option<Duration>,
    /// Extensions asked for; `None` means every extension the policy grants.
    pub extensions: Option<Vec<String>>,
    /// `force-command` asked for.
    pub force_command: Option<String>,
    /// `source-address` blocks asked for.
    pub source_address: Option<Vec<String>>,
}

/// What a policy grants for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Name of the policy that granted it.
    pub policy: String,
    /// Logins (as requested).
    pub logins: Vec<String>,
    /// Host patterns (as requested).
    pub hosts: Vec<String>,
    /// Certificate lifetime.
    pub cert_ttl: Duration,
    /// Task lifetime.
    pub task_ttl: Duration,
    /// Standard extensions.
    pub extensions: Vec<String>,
    /// `force-command`.
    pub force_command: Option<String>,
    /// `source-address`.
    pub source_address: Option<Vec<String>>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No policy matches the identity.
    #[error("no policy matches issuer {issuer:?}, subject {subject:?}")]
    NoMatchingPolicy {
        /// Issuer name.
        issuer: String,
        /// Subject.
        subject: String,
    },
    /// A login is not granted.
    #[error("policy {policy:?} does not grant login {login:?} (rule: logins)")]
    LoginNotAllowed {
        /// Policy.
        policy: String,
        /// Login.
        login: String,
    },
    /// A login template could not be filled with a valid login.
    #[error("policy {policy:?}: login template {template:?} gives no valid login ({detail})")]
    BadLoginTemplate {
        /// Policy.
        policy: String,
        /// Template.
        template: String,
        /// What went wrong.
        detail: String,
    },
    /// A host pattern is not granted.
    #[error("policy {policy:?} does not grant host pattern {host:?} (rule: hosts)")]
    HostNotAllowed {
        /// Policy.
        policy: String,
        /// Host pattern.
        host: String,
    },
    /// The certificate TTL is above the maximum.
    #[error("policy {policy:?}: certificate TTL {requested}s exceeds max_cert_ttl {max}s")]
    TtlExceedsMax {
        /// Policy.
        policy: String,
        /// Requested seconds.
        requested: u64,
        /// Maximum seconds.
        max: u64,
    },
    /// An extension is not granted.
    #[error("policy {policy:?} does not grant extension {extension:?} (rule: extensions)")]
    ExtensionNotAllowed {
        /// Policy.
        policy: String,
        /// Extension.
        extension: String,
    },
    /// The policy forces a different command.
    #[error("policy {policy:?} forces its own command (rule: force_command)")]
    ForceCommandNotAllowed {
        /// Policy.
        policy: String,
    },
    /// A source address block is outside the policy's.
    #[error("policy {policy:?} does not grant source address {address:?} (rule: source_address)")]
    SourceAddressNotAllowed {
        /// Policy.
        policy: String,
        /// Address block.
        address: String,
    },
    /// The task TTL is above the maximum.
    #[error("policy {policy:?}: task TTL {requested}s exceeds max_task_ttl {max}s")]
    TaskTtlExceedsMax {
        /// Policy.
        policy: String,
        /// Requested seconds.
        requested: u64,
        /// Maximum seconds.
        max: u64,
    },
}

impl PolicyError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::NoMatchingPolicy { .. } => "no_matching_policy",
            PolicyError::LoginNotAllowed { .. } => "login_not_allowed",
            PolicyError::BadLoginTemplate { .. } => "login_template_invalid",
            PolicyError::HostNotAllowed { .. } => "host_not_allowed",
            PolicyError::TtlExceedsMax { .. } => "ttl_exceeds_max",
            PolicyError::TaskTtlExceedsMax { .. } => "task_ttl_exceeds_max",
            PolicyError::ExtensionNotAllowed { .. } => "extension_not_allowed",
            PolicyError::ForceCommandNotAllowed { .. } => "force_command_not_allowed",
            PolicyError::SourceAddressNotAllowed { .. } => "source_address_not_allowed",
        }
    }
}

/// The configured policies plus the CA-wide limits.
#[derive(Debug, Clone)]
pub struct Policies {
    policies: Vec<PolicyConfig>,
    limits: CaConfig,
}

impl Policies {
    /// Build from configuration (validated already).
    pub fn new(policies: Vec<PolicyConfig>, limits: CaConfig) -> Policies {
        Policies { policies, limits }
    }

    /// Policies of `role` whose issuer, subject and claims match `identity`, in order.
    pub fn matching<'a>(
        &'a self,
        identity: &'a Identity,
        role: Role,
    ) -> impl Iterator<Item = &'a PolicyConfig> {
        self.policies
            .iter()
            .filter(move |p| p.role == role && policy_matches(p, identity))
    }

    /// The first matching agent policy that grants the whole request, or the refusal of
    /// the first matching policy.
    pub fn evaluate(&self, identity: &Identity, request: &Request) -> Result<Grant, PolicyError> {
        let mut first_error = None;
        for policy in self.matching(identity, Role::Agent) {
            match self.grant(policy, identity, request) {
                Ok(grant) => return Ok(grant),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(
            first_error.unwrap_or_else(|| PolicyError::NoMatchingPolicy {
                issuer: identity.issuer_name.clone(),
                subject: identity.subject.clone(),
            }),
        )
    }

    /// What `policy` grants for `request`, or why it does not.
    pub fn grant(
        &self,
        policy: &PolicyConfig,
        identity: &Identity,
        request: &Request,
    ) -> Result<Grant, PolicyError> {
        let name = || policy.name.clone();
        let mut template_error = None;
        let mut login_patterns = Vec::with_capacity(policy.logins.len());
        for template in &policy.logins {
            match expand_template(template, identity) {
                Ok(pattern) => login_patterns.push(pattern),
                Err(detail) => {
                    template_error.get_or_insert(PolicyError::BadLoginTemplate {
                        policy: name(),
                        template: template.clone(),
                        detail,
                    });
                }
            }
        }
        for login in &request.logins {
            if !login_patterns.iter().any(|p| glob::matches(p, login)) {
                return Err(template_error.unwrap_or(PolicyError::LoginNotAllowed {
                    policy: name(),
                    login: login.clone(),
                }));
            }
        }
        for host in &request.hosts {
            if !policy.hosts.iter().any(|p| glob::covers(p, host)) {
                return Err(PolicyError::HostNotAllowed {
                    policy: name(),
                    host: host.clone(),
                });
            }
        }
        let max_cert = policy
            .max_cert_ttl
            .unwrap_or(self.limits.max_cert_ttl)
            .min(self.limits.max_cert_ttl);
        let max_task = policy
            .max_task_ttl
            .unwrap_or(self.limits.max_task_ttl)
            .min(self.limits.max_task_ttl);
        let cert_ttl = match request.cert_ttl {
            Some(ttl) if ttl > max_cert => {
                return Err(PolicyError::TtlExceedsMax {
                    policy: name(),
                    requested: ttl.as_secs(),
                    max: max_cert.as_secs(),
                });
            }
            Some(ttl) => ttl,
            None => self.limits.default_cert_ttl.min(max_cert),
        };
        let task_ttl = match request.task_ttl {
            Some(ttl) if ttl > max_task => {
                return Err(PolicyError::TaskTtlExceedsMax {
                    policy: name(),
                    requested: ttl.as_secs(),
                    max: max_task.as_secs(),
                });
            }
            Some(ttl) => ttl,
            None => self.limits.default_task_ttl.min(max_task),
        };
        let extensions = match &request.extensions {
            None => policy.extensions.clone(),
            Some(asked) => {
                if let Some(extension) = asked.iter().find(|e| !policy.extensions.contains(e)) {
                    return Err(PolicyError::ExtensionNotAllowed {
                        policy: name(),
                        extension: extension.clone(),
                    });
                }
                asked.clone()
            }
        };
        // A policy's forced command always applies; without one, a request may restrict
        // itself to a command.
        let force_command = match (&policy.force_command, &request.force_command) {
            (Some(forced), Some(asked)) if forced != asked => {
                return Err(PolicyError::ForceCommandNotAllowed { policy: name() });
            }
            (Some(forced), _) => Some(forced.clone()),
            (None, asked) => asked.clone(),
        };
        let source_address = match (&policy.source_address, &request.source_address) {
            (Some(allowed), Some(asked)) => {
                let allowed: Vec<Cidr> = allowed.iter().filter_map(|a| Cidr::parse(a)).collect();
                for address in asked {
                    let inside = Cidr::parse(address)
                        .is_some_and(|c| allowed.iter().any(|a| a.contains(&c)));
                    if !inside {
                        return Err(PolicyError::SourceAddressNotAllowed {
                            policy: name(),
                            address: address.clone(),
                        });
                    }
                }
                Some(asked.clone())
            }
            (Some(allowed), None) => Some(allowed.clone()),
            (None, asked) => asked.clone(),
        };
        Ok(Grant {
            policy: name(),
            logins: request.logins.clone(),
            hosts: request.hosts.clone(),
            cert_ttl,
            task_ttl,
            extensions,
            force_command,
            source_address,
        })
    }
}

fn policy_matches(policy: &PolicyConfig, identity: &Identity) -> bool {
    policy.issuer == identity.issuer_name
        && glob::matches(&policy.subject, &identity.subject)
        && policy.claims.iter().all(|(path, pattern)| {
            claim_at(&identity.claims, path).is_some_and(|v| value_matches(v, pattern))
        })
}

/// The claim at a dotted path. Claim names may themselves contain dots
/// (`kubernetes.io`), so every split of the path is tried.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.match_indices('.').find_map(|(i, _)| {
        let (head, rest) = (&path[..i], &path[i + 1..]);
        match claims.get(head)? {
            Value::Object(inner) => claim_at(inner, rest),
            _ => None,
        }
    })
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn value_matches(value: &Value, pattern: &str) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|v| value_matches(v, pattern)),
        other => scalar_text(other).is_some_and(|text| glob::matches(pattern, &text)),
    }
}

/// Fill `{sub}` and `{claims.PATH}` in a login pattern. Each filled-in value must itself be
/// a valid login name, so a claim can never inject a separator, newline or wildcard.
fn expand_template(template: &str, identity: &Identity) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or("unclosed {")? + open;
        let name = &rest[open + 1..close];
        let value = if name == "sub" {
            Some(identity.subject.clone())
        } else {
            name.strip_prefix("claims.")
                .and_then(|path| claim_at(&identity.claims, path))
                .and_then(scalar_text)
        };
        let value = value.ok_or_else(|| format!("claim {name} is missing"))?;
        if !profile::is_valid_login(&value) {
            return Err(format!("{name} is not a valid login name"));
        }
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn identity(sub: &str, claims: Value) -> Identity {
        let Value::Object(claims) = claims else {
            panic!("object")
        };
        Identity {
            issuer_name: "gh".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: sub.into(),
            claims,
            jti: None,
            expires_at: 0,
            replay_key: None,
        }
    }

    fn policy(logins: &[&str], hosts: &[&str]) -> PolicyConfig {
        PolicyConfig {
            name: "p".into(),
            issuer: "gh".into(),
            subject: "repo:acme/*".into(),
            claims: BTreeMap::from([("kubernetes.io.namespace".into(), "ci".into())]),
            role: Role::Agent,
            logins: logins.iter().map(|s| s.to_string()).collect(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            max_cert_ttl: Some(Duration::from_secs(300)),
            max_task_ttl: None,
            extensions: vec![],
            force_command: None,
            source_address: None,
        }
    }

    fn request(logins: &[&str], hosts: &[&str]) -> Request {
        Request {
            logins: logins.iter().map(|s| s.to_string()).collect(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            ..Request::default()
        }
    }

    fn claims() -> Value {
        serde_json::json!({"kubernetes.io": {"namespace": "ci"}, "repository_owner": "acme", "evil": "a,b"})
    }

    #[test]
    fn grants_and_refusals_name_the_rule() {
        let policies = Policies::new(
            vec![policy(
                &["deploy", "{claims.repository_owner}"],
                &["*.prod.example.com"],
            )],
            CaConfig::default(),
        );
        let who = identity("repo:acme/app", claims());
        let grant = policies
            .evaluate(
                &who,
                &request(&["deploy", "acme"], &["web-*.prod.example.com"]),
            )
            .expect("grant");
        assert_eq!(grant.cert_ttl, Duration::from_secs(300));
        assert_eq!(
            policies
                .evaluate(&who, &request(&["root"], &["web.prod.example.com"]))
                .expect_err("login")
                .code(),
            "login_not_allowed"
        );
        assert_eq!(
            policies
                .evaluate(&who, &request(&["deploy"], &["*"]))
                .expect_err("host")
                .code(),
            "host_not_allowed"
        );
        let mut ttl = request(&["deploy"], &["a.prod.example.com"]);
        ttl.cert_ttl = Some(Duration::from_secs(301));
        assert_eq!(
            policies.evaluate(&who, &ttl).expect_err("ttl").code(),
            "ttl_exceeds_max"
        );
        let stranger = identity("repo:other/app", claims());
        assert_eq!(
            policies
                .evaluate(&stranger, &request(&["deploy"], &[]))
                .expect_err("none")
                .code(),
            "no_matching_policy"
        );
    }

    #[test]
    fn templates_refuse_injection() {
        let policies = Policies::new(
            vec![policy(&["{claims.evil}"], &["*"])],
            CaConfig::default(),
        );
        let who = identity("repo:acme/app", claims());
        let err = policies
            .evaluate(&who, &request(&["a"], &["x"]))
            .expect_err("injection");
        assert_eq!(err.code(), "login_template_invalid");
    }

    #[test]
    fn dotted_claim_paths() {
        let Value::Object(c) =
            serde_json::json!({"a": {"b.c": {"d": 1}}, "x.y": "z", "arr": ["p", "q"]})
        else {
            panic!()
        };
        assert_eq!(claim_at(&c, "a.b.c.d"), Some(&serde_json::json!(1)));
        assert_eq!(claim_at(&c, "x.y"), Some(&serde_json::json!("z")));
        assert!(value_matches(claim_at(&c, "arr").expect("arr"), "q"));
        assert!(claim_at(&c, "a.nope").is_none());
    }
}

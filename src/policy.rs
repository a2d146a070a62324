//! Policies: which verified identities may open tasks with which logins, host patterns,
//! lifetimes, extensions and critical options. A request gets exactly what it asks for or
//! a refusal that names the policy rule — never a silent clamp.
//!
//! Whether a policy applies to an identity is decided in exactly one place,
//! [`check_match`], which names the first rule that fails; issuance
//! ([`Policies::evaluate`]) and the operator's `writ admin policy explain`
//! ([`Policies::explain`]) both use it, so an explanation can never disagree with what the
//! CA does. This module only decides; it never reads the clock, the store or the network.

use std::time::Duration;

use serde::Serialize;
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

/// What a `role = "host"` policy grants a host identity for `POST /v1/host-certificates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    /// Name of the policy that granted it.
    pub policy: String,
    /// The host names (as requested, every one covered by the policy's `hosts`).
    pub names: Vec<String>,
}

/// Why a policy does not apply to an identity: the first rule that fails (see
/// [`check_match`]). Serialized with a `kind` tag for `policy explain --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mismatch {
    /// The policy is for another `[[issuer]]`.
    Issuer {
        /// The policy's `issuer`.
        policy_issuer: String,
        /// The issuer that verified the token.
        token_issuer: String,
    },
    /// The token's `sub` does not match the policy's `subject` glob.
    Subject {
        /// The policy's `subject` glob.
        pattern: String,
        /// The token's `sub`.
        subject: String,
    },
    /// A claim the policy names is not in the token.
    ClaimMissing {
        /// Dotted claim path.
        path: String,
    },
    /// A claim's value does not match the policy's glob (for an array: no element does).
    ClaimMismatch {
        /// Dotted claim path.
        path: String,
        /// The policy's glob.
        pattern: String,
        /// The token's value.
        value: Value,
    },
    /// The identity matches, but the policy is for another role.
    Role {
        /// The policy's `role`.
        policy_role: &'static str,
        /// The role asked about (`agent` for certificates).
        wanted: &'static str,
    },
}

impl Mismatch {
    /// The policy rule (configuration key) that does not hold.
    pub fn rule(&self) -> &'static str {
        match self {
            Mismatch::Issuer { .. } => "issuer",
            Mismatch::Subject { .. } => "subject",
            Mismatch::ClaimMissing { .. } | Mismatch::ClaimMismatch { .. } => "claims",
            Mismatch::Role { .. } => "role",
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Issuer {
                policy_issuer,
                token_issuer,
            } => write!(
                f,
                "the policy is for issuer {policy_issuer:?}, the token was verified by {token_issuer:?}"
            ),
            Mismatch::Subject { pattern, subject } => {
                write!(f, "subject {subject:?} does not match {pattern:?}")
            }
            Mismatch::ClaimMissing { path } => write!(f, "claim {path} is missing"),
            Mismatch::ClaimMismatch {
                path,
                pattern,
                value,
            } => write!(f, "claim {path} = {value} does not match {pattern:?}"),
            Mismatch::Role {
                policy_role,
                wanted,
            } => write!(
                f,
                "the policy has role {policy_role}; certificates need role {wanted}"
            ),
        }?;
        write!(f, " (rule: {})", self.rule())
    }
}

/// A login template of a policy that gives no valid login for an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableLogin {
    /// The template, e.g. `{claims.repository_owner}`.
    pub template: String,
    /// Why, e.g. `claims.repository_owner is not a valid login name`.
    pub reason: String,
}

/// The most a matching policy offers an identity, whatever the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Login patterns, templates filled in.
    pub logins: Vec<String>,
    /// Login templates that give no valid login for this identity.
    pub unusable_logins: Vec<UnusableLogin>,
    /// Host patterns a task may name (or narrow).
    pub hosts: Vec<String>,
    /// Longest certificate (policy value capped by `[ca]`).
    pub max_cert_ttl: Duration,
    /// Longest task (policy value capped by `[ca]`).
    pub max_task_ttl: Duration,
    /// Extensions.
    pub extensions: Vec<String>,
    /// Forced command.
    pub force_command: Option<String>,
    /// Source address blocks.
    pub source_address: Option<Vec<String>>,
}

/// What one policy does for an identity and a request (see [`Policies::explain`]).
#[derive(Debug, Clone)]
pub struct PolicyVerdict {
    /// The policy's name.
    pub policy: String,
    /// Its outcome.
    pub outcome: Verdict,
}

/// The outcome of one policy.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The policy does not apply to the identity.
    NoMatch(Mismatch),
    /// The policy applies: what it offers, and what it grants for the request or why not.
    Matches {
        /// The most it offers (boxed: the variants differ a lot in size).
        offer: Box<Offer>,
        /// [`Policies::grant`] for the request.
        result: Result<Grant, PolicyError>,
    },
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

    /// The policy called `name`.
    pub fn named(&self, name: &str) -> Option<&PolicyConfig> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Policies of `role` whose issuer, subject and claims match `identity`, in order.
    pub fn matching<'a>(
        &'a self,
        identity: &'a Identity,
        role: Role,
    ) -> impl Iterator<Item = &'a PolicyConfig> {
        self.policies
            .iter()
            .filter(move |p| check_match(p, identity, role).is_ok())
    }

    /// Every policy, in order, with what it does for `identity` and `request` as an agent:
    /// why it does not apply, or what it offers and what it grants or refuses. The first
    /// verdict that grants is what [`Policies::evaluate`] returns. Decides nothing new
    /// and has no side effects (used by `writ admin policy explain`).
    pub fn explain(&self, identity: &Identity, request: &Request) -> Vec<PolicyVerdict> {
        self.policies
            .iter()
            .map(|policy| PolicyVerdict {
                policy: policy.name.clone(),
                outcome: match check_match(policy, identity, Role::Agent) {
                    Err(mismatch) => Verdict::NoMatch(mismatch),
                    Ok(()) => Verdict::Matches {
                        offer: Box::new(self.offer(policy, identity)),
                        result: self.grant(policy, identity, request),
                    },
                },
            })
            .collect()
    }

    /// What `policy` offers `identity` at most: login patterns with templates filled in,
    /// host patterns, and the effective lifetimes (capped by the CA-wide limits).
    pub fn offer(&self, policy: &PolicyConfig, identity: &Identity) -> Offer {
        let (logins, unusable_logins) = fill_logins(policy, identity);
        let (max_cert_ttl, max_task_ttl) = self.max_ttls(policy);
        Offer {
            logins,
            unusable_logins,
            hosts: policy.hosts.clone(),
            max_cert_ttl,
            max_task_ttl,
            extensions: policy.extensions.clone(),
            force_command: policy.force_command.clone(),
            source_address: policy.source_address.clone(),
        }
    }

    /// The longest certificate and task `policy` allows, capped by `[ca]` (what
    /// `writ check-config` shows as its effective lifetimes).
    pub fn max_ttls(&self, policy: &PolicyConfig) -> (Duration, Duration) {
        let max_cert = policy
            .max_cert_ttl
            .unwrap_or(self.limits.max_cert_ttl)
            .min(self.limits.max_cert_ttl);
        let max_task = policy
            .max_task_ttl
            .unwrap_or(self.limits.max_task_ttl)
            .min(self.limits.max_task_ttl);
        (max_cert, max_task)
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

    /// The first matching `role = "host"` policy whose `hosts` patterns (templates filled
    /// from the identity, [`host_patterns`]) cover every one of `names`, or the refusal
    /// of the first matching host policy (`host_not_allowed` naming the first uncovered
    /// name), or `no_matching_policy`. Agent and admin policies never grant host names.
    pub fn evaluate_host(
        &self,
        identity: &Identity,
        names: &[String],
    ) -> Result<HostGrant, PolicyError> {
        let mut first_error = None;
        for policy in self.matching(identity, Role::Host) {
            let patterns = host_patterns(policy, identity);
            match names
                .iter()
                .find(|name| !patterns.iter().any(|p| glob::matches(p, name)))
            {
                None => {
                    return Ok(HostGrant {
                        policy: policy.name.clone(),
                        names: names.to_vec(),
                    });
                }
                Some(name) => {
                    first_error.get_or_insert(PolicyError::HostNotAllowed {
                        policy: policy.name.clone(),
                        host: name.clone(),
                    });
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
        let (login_patterns, unusable) = fill_logins(policy, identity);
        for login in &request.logins {
            if !login_patterns.iter().any(|p| glob::matches(p, login)) {
                return Err(match unusable.into_iter().next() {
                    Some(unusable) => PolicyError::BadLoginTemplate {
                        policy: name(),
                        template: unusable.template,
                        detail: unusable.reason,
                    },
                    None => PolicyError::LoginNotAllowed {
                        policy: name(),
                        login: login.clone(),
                    },
                });
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
        let (max_cert, max_task) = self.max_ttls(policy);
        let cert_ttl = match request.cert_ttl {
            Some(ttl) if ttl > max_cert => {
                return Err(PolicyError::TtlExceedsMax {
                    policy: name(),
                    requested: ttl.as_secs(),
                    max: max_cert.as_secs(),
                });
            }
            Some(ttl) => ttl,
            None => self.limits.cert_ttl_default().min(max_cert),
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
            None => self.limits.task_ttl_default().min(max_task),
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

/// Whether `policy` applies to `identity` in `role`, or the first of its rules that does
/// not hold, checked in the order issuer, subject, claims (in key order), role. The only
/// place that decides matching: [`Policies::matching`] and [`Policies::explain`] use it.
pub fn check_match(policy: &PolicyConfig, identity: &Identity, role: Role) -> Result<(), Mismatch> {
    if policy.issuer != identity.issuer_name {
        return Err(Mismatch::Issuer {
            policy_issuer: policy.issuer.clone(),
            token_issuer: identity.issuer_name.clone(),
        });
    }
    if !glob::matches(&policy.subject, &identity.subject) {
        return Err(Mismatch::Subject {
            pattern: policy.subject.clone(),
            subject: identity.subject.clone(),
        });
    }
    for (path, pattern) in &policy.claims {
        match claim_at(&identity.claims, path) {
            None => return Err(Mismatch::ClaimMissing { path: path.clone() }),
            Some(value) if !value_matches(value, pattern) => {
                return Err(Mismatch::ClaimMismatch {
                    path: path.clone(),
                    pattern: pattern.clone(),
                    value: value.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if policy.role != role {
        return Err(Mismatch::Role {
            policy_role: role_name(policy.role),
            wanted: role_name(role),
        });
    }
    Ok(())
}

/// The configuration spelling of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Agent => "agent",
        Role::Admin => "admin",
        Role::Host => "host",
    }
}

/// The host-name patterns a `role = "host"` policy lets `identity` speak for: its `hosts`
/// with `{sub}`/`{claims.…}` filled in (lowercased; each filled-in value must be a DNS
/// name, so a claim can never inject a wildcard or a separator). A template that cannot
/// be filled for this identity is left out: it covers nothing.
pub fn host_patterns(policy: &PolicyConfig, identity: &Identity) -> Vec<String> {
    policy
        .hosts
        .iter()
        .filter_map(|template| expand_template(template, identity, Fill::HostName).ok())
        .filter(|pattern| profile::is_valid_host_pattern(pattern))
        .collect()
}

/// What a template's filled-in values must be.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// A login name ([`profile::is_valid_login`]).
    Login,
    /// A host name ([`profile::is_valid_host_name`]), compared in lowercase.
    HostName,
}

/// A policy's login patterns with `{sub}`/`{claims.…}` filled in from `identity`, and the
/// templates that give no valid login (in policy order).
fn fill_logins(policy: &PolicyConfig, identity: &Identity) -> (Vec<String>, Vec<UnusableLogin>) {
    let mut patterns = Vec::with_capacity(policy.logins.len());
    let mut unusable = Vec::new();
    for template in &policy.logins {
        match expand_template(template, identity, Fill::Login) {
            Ok(pattern) => patterns.push(pattern),
            Err(reason) => unusable.push(UnusableLogin {
                template: template.clone(),
                reason,
            }),
        }
    }
    (patterns, unusable)
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

/// Fill `{sub}` and `{claims.PATH}` in a login or host pattern. Each filled-in value must
/// itself be a valid login name (or host name, `fill`), so a claim can never inject a
/// separator, newline or wildcard.
fn expand_template(template: &str, identity: &Identity, fill: Fill) -> Result<String, String> {
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
        let value = match fill {
            Fill::Login if profile::is_valid_login(&value) => value,
            Fill::Login => return Err(format!("{name} is not a valid login name")),
            Fill::HostName => {
                let lower = value.to_ascii_lowercase();
                if !profile::is_valid_host_name(&lower) {
                    return Err(format!("{name} is not a valid host name"));
                }
                lower
            }
        };
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
    fn only_host_policies_grant_host_names_and_templates_fill_from_claims() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let who = identity(
            "repo:acme/app",
            serde_json::json!({"kubernetes.io": {"namespace": "ci"}, "hostname": "Web1", "evil": "*"}),
        );
        // An agent policy whose hosts would cover the name grants no host certificate.
        let agent = Policies::new(vec![policy(&["deploy"], &["*"])], CaConfig::default());
        assert_eq!(
            agent
                .evaluate_host(&who, &names(&["web1.example.com"]))
                .expect_err("agent policy")
                .code(),
            "no_matching_policy"
        );
        let mut host = policy(&[], &["{claims.hostname}.example.com", "{claims.evil}.x"]);
        host.role = Role::Host;
        let hosts = Policies::new(vec![host.clone()], CaConfig::default());
        assert_eq!(
            host_patterns(&host, &who),
            ["web1.example.com"],
            "lowercased; a wildcard from a claim fills nothing"
        );
        let grant = hosts
            .evaluate_host(&who, &names(&["web1.example.com"]))
            .expect("covered");
        assert_eq!(grant.names, ["web1.example.com"]);
        let refused = hosts
            .evaluate_host(&who, &names(&["web1.example.com", "web2.example.com"]))
            .expect_err("not covered");
        assert_eq!(
            refused,
            PolicyError::HostNotAllowed {
                policy: "p".into(),
                host: "web2.example.com".into()
            }
        );
        // And a host policy grants no user certificate.
        assert_eq!(
            hosts
                .evaluate(&who, &request(&["deploy"], &["web1.example.com"]))
                .expect_err("host policy")
                .code(),
            "no_matching_policy"
        );
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

    fn named(name: &str, mut p: PolicyConfig) -> PolicyConfig {
        p.name = name.into();
        p
    }

    /// Every way a policy can fail to apply, in order, then a refusing and a granting
    /// match; the first granting verdict is exactly what `evaluate` returns.
    #[test]
    fn explain_names_the_first_failing_rule_of_every_policy() {
        let base = policy(
            &["deploy", "{claims.repository_owner}"],
            &["*.prod.example.com"],
        );
        let mut other_issuer = named("other-issuer", base.clone());
        other_issuer.issuer = "k8s".into();
        let mut other_subject = named("other-subject", base.clone());
        other_subject.subject = "repo:other/*".into();
        let mut missing_claim = named("missing-claim", base.clone());
        missing_claim
            .claims
            .insert("job_workflow_ref".into(), "*".into());
        let mut wrong_claim = named("wrong-claim", base.clone());
        wrong_claim
            .claims
            .insert("kubernetes.io.namespace".into(), "prod".into());
        let mut admin = named("admin", base.clone());
        admin.role = Role::Admin;
        let mut refuses = named("refuses", base.clone());
        refuses.logins = vec!["ops".into()];
        let grants = named("grants", base.clone());
        let also_grants = named("also-grants", base);
        let policies = Policies::new(
            vec![
                other_issuer,
                other_subject,
                missing_claim,
                wrong_claim,
                admin,
                refuses,
                grants,
                also_grants,
            ],
            CaConfig::default(),
        );
        let who = identity("repo:acme/app", claims());
        let ask = request(&["deploy", "acme"], &["web-1.prod.example.com"]);
        let verdicts = policies.explain(&who, &ask);
        let names: Vec<&str> = verdicts.iter().map(|v| v.policy.as_str()).collect();
        assert_eq!(
            names,
            [
                "other-issuer",
                "other-subject",
                "missing-claim",
                "wrong-claim",
                "admin",
                "refuses",
                "grants",
                "also-grants"
            ]
        );
        let mismatch = |i: usize| match &verdicts[i].outcome {
            Verdict::NoMatch(m) => m.clone(),
            other => panic!("{i}: expected no match, got {other:?}"),
        };
        assert_eq!(
            mismatch(0),
            Mismatch::Issuer {
                policy_issuer: "k8s".into(),
                token_issuer: "gh".into()
            }
        );
        assert_eq!(
            mismatch(1),
            Mismatch::Subject {
                pattern: "repo:other/*".into(),
                subject: "repo:acme/app".into()
            }
        );
        assert_eq!(
            mismatch(2),
            Mismatch::ClaimMissing {
                path: "job_workflow_ref".into()
            }
        );
        assert_eq!(
            mismatch(3),
            Mismatch::ClaimMismatch {
                path: "kubernetes.io.namespace".into(),
                pattern: "prod".into(),
                value: Value::String("ci".into())
            }
        );
        assert_eq!(mismatch(3).rule(), "claims");
        assert!(
            mismatch(3)
                .to_string()
                .contains("claim kubernetes.io.namespace = \"ci\" does not match \"prod\""),
            "{}",
            mismatch(3)
        );
        assert_eq!(
            mismatch(4),
            Mismatch::Role {
                policy_role: "admin",
                wanted: "agent"
            }
        );
        let Verdict::Matches { offer, result } = &verdicts[5].outcome else {
            panic!("refuses should match")
        };
        assert_eq!(offer.logins, ["ops"]);
        assert_eq!(
            result.as_ref().expect_err("refused").code(),
            "login_not_allowed"
        );
        let Verdict::Matches { offer, result } = &verdicts[6].outcome else {
            panic!("grants should match")
        };
        assert_eq!(offer.logins, ["deploy", "acme"], "templates are filled");
        assert_eq!(offer.max_cert_ttl, Duration::from_secs(300));
        assert_eq!(offer.max_task_ttl, CaConfig::default().max_task_ttl);
        let granted = result.as_ref().expect("granted");
        assert_eq!(granted.policy, "grants");
        assert_eq!(policies.evaluate(&who, &ask).as_ref(), Ok(granted));
        // `matching` agrees with `explain` about which policies apply.
        let matching: Vec<&str> = policies
            .matching(&who, Role::Agent)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(matching, ["refuses", "grants", "also-grants"]);
        let admins: Vec<&str> = policies
            .matching(&who, Role::Admin)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(admins, ["admin"]);
    }

    #[test]
    fn explain_reports_unusable_templates_and_matches_evaluate_refusals() {
        let policies = Policies::new(
            vec![policy(
                &["deploy", "{claims.evil}", "{claims.absent}"],
                &["*"],
            )],
            CaConfig::default(),
        );
        let who = identity("repo:acme/app", claims());
        let ask = request(&["root"], &["x"]);
        let verdicts = policies.explain(&who, &ask);
        let Verdict::Matches { offer, result } = &verdicts[0].outcome else {
            panic!("should match")
        };
        assert_eq!(offer.logins, ["deploy"]);
        let unusable: Vec<&str> = offer
            .unusable_logins
            .iter()
            .map(|u| u.template.as_str())
            .collect();
        assert_eq!(unusable, ["{claims.evil}", "{claims.absent}"]);
        assert!(offer.unusable_logins[1].reason.contains("missing"));
        let refusal = result.as_ref().expect_err("refused");
        assert_eq!(refusal.code(), "login_template_invalid");
        assert_eq!(policies.evaluate(&who, &ask).as_ref(), Err(refusal));

        // Nothing matches: every verdict says why, and evaluate says no policy matches.
        let stranger = identity("repo:other/app", claims());
        assert!(
            policies
                .explain(&stranger, &ask)
                .iter()
                .all(|v| matches!(v.outcome, Verdict::NoMatch(Mismatch::Subject { .. })))
        );
        assert_eq!(
            policies.evaluate(&stranger, &ask).expect_err("none").code(),
            "no_matching_policy"
        );
    }

    #[test]
    fn array_claims_match_any_element_in_explain_too() {
        let mut p = policy(&["deploy"], &["*"]);
        p.claims = BTreeMap::from([("groups".into(), "ops-*".into())]);
        let policies = Policies::new(vec![p], CaConfig::default());
        let member = identity(
            "repo:acme/app",
            serde_json::json!({"groups": ["dev", "ops-oncall"]}),
        );
        assert!(matches!(
            policies.explain(&member, &request(&["deploy"], &[]))[0].outcome,
            Verdict::Matches { .. }
        ));
        let outsider = identity("repo:acme/app", serde_json::json!({"groups": ["dev"]}));
        let Verdict::NoMatch(m) =
            &policies.explain(&outsider, &request(&["deploy"], &[]))[0].outcome
        else {
            panic!("should not match")
        };
        assert_eq!(m.rule(), "claims");
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

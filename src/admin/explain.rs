//! `writ admin policy explain`: verifies a workload token exactly as the CA does, then
//! shows which issuer verified it, the subject and claims policies can match on, what
//! every `[[policy]]` does with it (why it does not apply, or what it offers and grants or
//! refuses for the asked logins and hosts), and the overall decision — the one
//! [`Policies::evaluate`] would make for a real request.
//!
//! Verification is [`Verifier::verify`] and matching is [`Policies::explain`] /
//! [`Policies::evaluate`], so the explanation cannot drift from what the CA does. It
//! fetches the issuer's keys (JWKS) like the CA, and nothing else: no certificate, no
//! store, no audit record, and the token is not marked as used. The token itself is never
//! part of an [`Explanation`]; on refusal, only a few unverified claims are shown, labelled
//! as such.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::Duration;

use base64ct::{Base64UrlUnpadded, Encoding};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AdminError, Context, Render, Status, emit, pretty};
use crate::client::token_source::read_token;
use crate::config::{Config, Replay};
use crate::duration;
use crate::identity::{Identity, MAX_TOKEN_BYTES, Verifier};
use crate::policy::{Grant, Mismatch, Offer, Policies, PolicyError, Request, Verdict};

/// `writ admin policy …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PolicyCommand {
    /// Explain what the CA would do with a workload token, without issuing anything.
    ///
    /// Verifies the token exactly as `writ serve` does (fetching the issuer's JWKS), then
    /// prints which issuer verified it (or the reason code and message if it was refused),
    /// its subject and the claims policies can match on, every [[policy]] in order — why it
    /// does not match (issuer, subject, a claim, or role), or what it offers and what it
    /// grants or refuses for --logins/--hosts — and the decision: the first matching
    /// policy that grants the whole request. Nothing is issued, no store or audit log is
    /// touched, the CA passphrase is not read, and the token is not marked as used; the
    /// token itself is never printed.
    ///
    /// Exit status: 0 when the token verified (whatever the decision; use --json and
    /// `.decision.result` to script on it), 1 when it was refused or on any error.
    Explain {
        /// The workload token (JWT): `-` reads it from stdin, `@FILE` from a file, anything
        /// else is the token itself (visible to other local users in the process list;
        /// prefer - or @FILE).
        #[arg(long, value_name = "TOKEN|-|@FILE")]
        token: String,
        /// Logins the task would name, comma-separated (e.g. deploy,backup).
        #[arg(long, value_delimiter = ',', value_name = "LOGIN,…")]
        logins: Vec<String>,
        /// Host patterns the task would name, comma-separated (e.g. web-*.prod.example.com).
        #[arg(long, value_delimiter = ',', value_name = "PATTERN,…")]
        hosts: Vec<String>,
        /// Certificate lifetime to ask for, e.g. 5m (default: the CA's default_cert_ttl,
        /// capped by the policy).
        #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
        ttl: Option<Duration>,
        /// Task lifetime to ask for, e.g. 1h (default: the CA's default_task_ttl, capped by
        /// the policy).
        #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
        task_ttl: Option<Duration>,
        /// Print the explanation as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Run `writ admin policy explain`: read the token (from stdin for `-`), explain, write
/// the explanation to `out`. [`Status::Failure`] when the token was refused.
pub async fn run(
    context: &Context,
    command: PolicyCommand,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let PolicyCommand::Explain {
        token,
        logins,
        hosts,
        ttl,
        task_ttl,
        json,
    } = command;
    let request = ExplainRequest {
        logins,
        hosts,
        cert_ttl: ttl,
        task_ttl,
    };
    let token = read_token(&token, &mut std::io::stdin().lock())?;
    let now = context.now().unix_timestamp();
    let explanation = explain(&context.config, &token, &request, now).await;
    emit(out, &explanation, json)?;
    Ok(match explanation.outcome() {
        Outcome::TokenRefused => Status::Failure,
        Outcome::Allowed | Outcome::Denied => Status::Success,
    })
}

/// What to ask the policies about (the `task` part of a certificate request).
#[derive(Debug, Clone, Default)]
pub struct ExplainRequest {
    /// Logins for the task.
    pub logins: Vec<String>,
    /// Host patterns for the task.
    pub hosts: Vec<String>,
    /// Explicit certificate lifetime (`ttl_seconds`), if any.
    pub cert_ttl: Option<Duration>,
    /// Explicit task lifetime (`task.ttl_seconds`), if any.
    pub task_ttl: Option<Duration>,
}

/// The whole explanation: the token, the request, every policy in order, the decision.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// When the token was checked.
    #[serde(serialize_with = "rfc3339")]
    pub checked_at: i64,
    /// Token verification.
    pub token: TokenReport,
    /// What was asked.
    pub request: RequestReport,
    /// Every `[[policy]]` in configuration order (empty when the token was refused).
    pub policies: Vec<PolicyReport>,
    /// The decision for the request (absent when the token was refused).
    pub decision: Option<Decision>,
}

/// How an explanation ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The token did not verify.
    TokenRefused,
    /// The token verified; the policies refuse the request.
    Denied,
    /// The token verified; a policy grants the request.
    Allowed,
}

/// Token verification.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TokenReport {
    /// The token verified.
    Verified {
        /// The configured `[[issuer]]` name that verified it.
        issuer: String,
        /// Its `iss`.
        iss: String,
        /// Its `sub`.
        subject: String,
        /// Its `exp`.
        #[serde(serialize_with = "rfc3339")]
        expires_at: i64,
        /// Its `jti`, if any.
        jti: Option<String>,
        /// The issuer's replay setting (`reject` or `allow`).
        replay: &'static str,
        /// Every claim; policies match on them by dotted path.
        claims: Map<String, Value>,
    },
    /// The token was refused.
    Refused {
        /// [`crate::identity::TokenError::reason_code`].
        code: &'static str,
        /// The error message.
        message: String,
        /// A few claims read WITHOUT verification, to help find the cause.
        unverified: Option<Unverified>,
    },
}

/// Claims and header fields read from a refused token without verifying it. Not trusted;
/// shown only to help an operator see why verification failed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unverified {
    /// Header `alg`.
    pub alg: Option<String>,
    /// Header `kid`.
    pub kid: Option<String>,
    /// `iss`.
    pub iss: Option<String>,
    /// The configured `[[issuer]]` whose `issuer` equals `iss`, if any.
    pub configured_issuer: Option<String>,
    /// `sub`.
    pub sub: Option<String>,
    /// `aud`.
    pub aud: Option<Value>,
    /// `iat`.
    #[serde(serialize_with = "rfc3339_opt")]
    pub issued_at: Option<i64>,
    /// `nbf`.
    #[serde(serialize_with = "rfc3339_opt")]
    pub not_before: Option<i64>,
    /// `exp`.
    #[serde(serialize_with = "rfc3339_opt")]
    pub expires_at: Option<i64>,
}

/// What was asked.
#[derive(Debug, Clone, Serialize)]
pub struct RequestReport {
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Explicit certificate lifetime, seconds.
    pub cert_ttl_seconds: Option<u64>,
    /// Explicit task lifetime, seconds.
    pub task_ttl_seconds: Option<u64>,
}

/// What one policy does.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// The policy's name.
    pub name: String,
    /// Its outcome.
    #[serde(flatten)]
    pub outcome: PolicyOutcome,
}

/// The outcome of one policy.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PolicyOutcome {
    /// The policy does not apply to the identity.
    NoMatch {
        /// The policy rule (configuration key) that fails first: `issuer`, `subject`,
        /// `claims` or `role`.
        rule: &'static str,
        /// Why, in words.
        reason: String,
        /// The details.
        mismatch: Mismatch,
    },
    /// The policy applies and grants the request.
    Grants {
        /// The most it offers.
        offer: OfferReport,
        /// What it grants.
        grant: GrantReport,
    },
    /// The policy applies but refuses the request.
    Refuses {
        /// The most it offers.
        offer: OfferReport,
        /// Why it refuses.
        refusal: Reason,
    },
}

/// A refusal: a stable code and a message naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// snake_case code (as in the API's error envelope).
    pub code: &'static str,
    /// Message.
    pub message: String,
}

impl From<&PolicyError> for Reason {
    fn from(error: &PolicyError) -> Reason {
        Reason {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// The most a matching policy offers the identity.
#[derive(Debug, Clone, Serialize)]
pub struct OfferReport {
    /// Login patterns, templates filled in.
    pub logins: Vec<String>,
    /// Login templates that give no valid login for this identity.
    pub unusable_logins: Vec<UnusableLoginReport>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Longest certificate, seconds.
    pub max_cert_ttl_seconds: u64,
    /// Longest task, seconds.
    pub max_task_ttl_seconds: u64,
    /// Extensions.
    pub extensions: Vec<String>,
    /// Forced command.
    pub force_command: Option<String>,
    /// Source address blocks.
    pub source_address: Option<Vec<String>>,
}

/// A login template that gives no valid login.
#[derive(Debug, Clone, Serialize)]
pub struct UnusableLoginReport {
    /// The template.
    pub template: String,
    /// Why.
    pub reason: String,
}

impl From<&Offer> for OfferReport {
    fn from(offer: &Offer) -> OfferReport {
        OfferReport {
            logins: offer.logins.clone(),
            unusable_logins: offer
                .unusable_logins
                .iter()
                .map(|u| UnusableLoginReport {
                    template: u.template.clone(),
                    reason: u.reason.clone(),
                })
                .collect(),
            hosts: offer.hosts.clone(),
            max_cert_ttl_seconds: offer.max_cert_ttl.as_secs(),
            max_task_ttl_seconds: offer.max_task_ttl.as_secs(),
            extensions: offer.extensions.clone(),
            force_command: offer.force_command.clone(),
            source_address: offer.source_address.clone(),
        }
    }
}

/// What a policy grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantReport {
    /// Logins.
    pub logins: Vec<String>,
    /// Host patterns.
    pub hosts: Vec<String>,
    /// Certificate lifetime, seconds.
    pub cert_ttl_seconds: u64,
    /// Task lifetime, seconds.
    pub task_ttl_seconds: u64,
    /// Extensions.
    pub extensions: Vec<String>,
    /// Forced command.
    pub force_command: Option<String>,
    /// Source address blocks.
    pub source_address: Option<Vec<String>>,
}

impl From<&Grant> for GrantReport {
    fn from(grant: &Grant) -> GrantReport {
        GrantReport {
            logins: grant.logins.clone(),
            hosts: grant.hosts.clone(),
            cert_ttl_seconds: grant.cert_ttl.as_secs(),
            task_ttl_seconds: grant.task_ttl.as_secs(),
            extensions: grant.extensions.clone(),
            force_command: grant.force_command.clone(),
            source_address: grant.source_address.clone(),
        }
    }
}

/// The decision for the request, as [`Policies::evaluate`] makes it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Decision {
    /// The first matching policy that grants the whole request.
    Allow {
        /// That policy.
        policy: String,
        /// What it grants.
        grant: GrantReport,
    },
    /// No matching policy grants it: the refusal of the first matching policy, or
    /// `no_matching_policy`.
    Deny {
        /// Why.
        refusal: Reason,
    },
}

/// Verify `token` as the CA would at `now` (Unix seconds) and explain what the configured
/// policies do with it for `request`. Fetches issuer keys; writes nothing.
pub async fn explain(
    config: &Config,
    token: &str,
    request: &ExplainRequest,
    now: i64,
) -> Explanation {
    let request_report = RequestReport {
        logins: request.logins.clone(),
        hosts: request.hosts.clone(),
        cert_ttl_seconds: request.cert_ttl.map(|d| d.as_secs()),
        task_ttl_seconds: request.task_ttl.map(|d| d.as_secs()),
    };
    let verifier = Verifier::new(&config.issuers);
    let identity = match verifier.verify(token, now).await {
        Ok(identity) => identity,
        Err(error) => {
            return Explanation {
                checked_at: now,
                token: TokenReport::Refused {
                    code: error.reason_code(),
                    message: error.to_string(),
                    unverified: unverified(config, token),
                },
                request: request_report,
                policies: Vec::new(),
                decision: None,
            };
        }
    };
    let policies = Policies::new(config.policies.clone(), config.ca.clone());
    let policy_request = Request {
        logins: request.logins.clone(),
        hosts: request.hosts.clone(),
        task_ttl: request.task_ttl,
        cert_ttl: request.cert_ttl,
        ..Request::default()
    };
    let reports = policies
        .explain(&identity, &policy_request)
        .into_iter()
        .map(|verdict| PolicyReport {
            name: verdict.policy,
            outcome: match verdict.outcome {
                Verdict::NoMatch(mismatch) => PolicyOutcome::NoMatch {
                    rule: mismatch.rule(),
                    reason: mismatch.to_string(),
                    mismatch,
                },
                Verdict::Matches {
                    offer,
                    result: Ok(grant),
                } => PolicyOutcome::Grants {
                    offer: offer.as_ref().into(),
                    grant: (&grant).into(),
                },
                Verdict::Matches {
                    offer,
                    result: Err(error),
                } => PolicyOutcome::Refuses {
                    offer: offer.as_ref().into(),
                    refusal: (&error).into(),
                },
            },
        })
        .collect();
    let decision = match policies.evaluate(&identity, &policy_request) {
        Ok(grant) => Decision::Allow {
            policy: grant.policy.clone(),
            grant: (&grant).into(),
        },
        Err(error) => Decision::Deny {
            refusal: (&error).into(),
        },
    };
    Explanation {
        checked_at: now,
        token: verified_report(config, identity),
        request: request_report,
        policies: reports,
        decision: Some(decision),
    }
}

fn verified_report(config: &Config, identity: Identity) -> TokenReport {
    let replay = config
        .issuers
        .iter()
        .find(|i| i.name == identity.issuer_name)
        .map_or(Replay::Reject, |i| i.replay);
    TokenReport::Verified {
        issuer: identity.issuer_name,
        iss: identity.issuer,
        subject: identity.subject,
        expires_at: identity.expires_at,
        jti: identity.jti,
        replay: match replay {
            Replay::Reject => "reject",
            Replay::Allow => "allow",
        },
        claims: identity.claims,
    }
}

/// A few header fields and claims of a refused token, decoded without verification.
fn unverified(config: &Config, token: &str) -> Option<Unverified> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return None;
    };
    let decode = |part: &str| -> Option<Map<String, Value>> {
        let bytes = Base64UrlUnpadded::decode_vec(part).ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let header = decode(header).unwrap_or_default();
    let claims = decode(payload).unwrap_or_default();
    if header.is_empty() && claims.is_empty() {
        return None;
    }
    let text = |map: &Map<String, Value>, key: &str| map.get(key)?.as_str().map(str::to_owned);
    let iss = text(&claims, "iss");
    Some(Unverified {
        alg: text(&header, "alg"),
        kid: text(&header, "kid"),
        configured_issuer: iss.as_ref().and_then(|iss| {
            config
                .issuers
                .iter()
                .find(|i| &i.issuer == iss)
                .map(|i| i.name.clone())
        }),
        iss,
        sub: text(&claims, "sub"),
        aud: claims.get("aud").cloned(),
        issued_at: claims.get("iat").and_then(Value::as_i64),
        not_before: claims.get("nbf").and_then(Value::as_i64),
        expires_at: claims.get("exp").and_then(Value::as_i64),
    })
}

impl Explanation {
    /// How it ended.
    pub fn outcome(&self) -> Outcome {
        match (&self.token, &self.decision) {
            (TokenReport::Refused { .. }, _) | (_, None) => Outcome::TokenRefused,
            (_, Some(Decision::Allow { .. })) => Outcome::Allowed,
            (_, Some(Decision::Deny { .. })) => Outcome::Denied,
        }
    }

    /// The JSON form (`--json`).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

impl Render for Explanation {
    fn text(&self) -> String {
        self.to_string()
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

/// The text form: one section each for the token, its claims, the request, the policies
/// and the decision.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self.checked_at;
        match &self.token {
            TokenReport::Refused {
                code,
                message,
                unverified,
            } => {
                writeln!(f, "Token: REFUSED ({code}): {message}")?;
                if let Some(u) = unverified {
                    writeln!(
                        f,
                        "  Read WITHOUT verification, to help find the cause (not trusted):"
                    )?;
                    let mut row = |name: &str, value: Option<String>| match value {
                        Some(value) => writeln!(f, "    {name:<4} {value}"),
                        None => Ok(()),
                    };
                    row("alg", u.alg.clone())?;
                    row("kid", u.kid.clone())?;
                    row(
                        "iss",
                        u.iss.as_ref().map(|iss| match &u.configured_issuer {
                            Some(name) => format!("{iss} (configured issuer {name:?})"),
                            None => format!("{iss} (no [[issuer]] has this issuer)"),
                        }),
                    )?;
                    row("sub", u.sub.clone())?;
                    row("aud", u.aud.as_ref().map(Value::to_string))?;
                    row("iat", u.issued_at.map(|t| when(t, now)))?;
                    row("nbf", u.not_before.map(|t| when(t, now)))?;
                    row("exp", u.expires_at.map(|t| when(t, now)))?;
                }
                writeln!(f, "No policy was evaluated: a token must verify first.")?;
            }
            TokenReport::Verified {
                issuer,
                iss,
                subject,
                expires_at,
                jti,
                replay,
                claims,
            } => {
                writeln!(f, "Token: verified by issuer {issuer:?} ({iss})")?;
                writeln!(f, "  subject  {subject}")?;
                writeln!(f, "  expires  {}", when(*expires_at, now))?;
                if let Some(jti) = jti {
                    writeln!(f, "  jti      {jti}")?;
                }
                let replay_note = if *replay == "reject" {
                    "a token opens one task; explaining neither uses it up nor checks whether \
                     it was used"
                } else {
                    "the token may be reused until it expires"
                };
                writeln!(f, "  replay   {replay} ({replay_note})")?;
                writeln!(f)?;
                writeln!(f, "Claims policies can match on (dotted paths):")?;
                let mut rows = Vec::new();
                flatten_claims("", claims, &mut rows);
                rows.sort();
                let width = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
                for (path, value) in rows {
                    writeln!(f, "  {path:<width$}  {value}")?;
                }
            }
        }
        writeln!(f)?;
        writeln!(f, "Request: {}", request_summary(&self.request))?;
        if self.request.logins.is_empty() && self.request.hosts.is_empty() {
            writeln!(
                f,
                "  (no --logins or --hosts: policies are checked against an empty task; see \
                 what each matching policy offers)"
            )?;
        }
        if matches!(self.token, TokenReport::Verified { .. }) {
            writeln!(f)?;
            writeln!(f, "Policies, in order:")?;
            if self.policies.is_empty() {
                writeln!(f, "  (none configured)")?;
            }
            for (i, policy) in self.policies.iter().enumerate() {
                let n = i + 1;
                let name = &policy.name;
                match &policy.outcome {
                    PolicyOutcome::NoMatch { reason, .. } => {
                        writeln!(f, "  {n}. {name:?}: does not match: {reason}")?;
                    }
                    PolicyOutcome::Grants { offer, grant } => {
                        writeln!(f, "  {n}. {name:?}: matches")?;
                        write_offer(f, offer)?;
                        writeln!(f, "       grants   {}", grant_summary(grant))?;
                    }
                    PolicyOutcome::Refuses { offer, refusal } => {
                        writeln!(f, "  {n}. {name:?}: matches")?;
                        write_offer(f, offer)?;
                        writeln!(f, "       refuses  {}: {}", refusal.code, refusal.message)?;
                    }
                }
            }
        }
        if let Some(decision) = &self.decision {
            writeln!(f)?;
            match decision {
                Decision::Allow { policy, grant } => writeln!(
                    f,
                    "Decision: ALLOW by policy {policy:?}: {}",
                    grant_summary(grant)
                )?,
                Decision::Deny { refusal } => {
                    writeln!(f, "Decision: DENY ({}): {}", refusal.code, refusal.message)?
                }
            }
        }
        writeln!(
            f,
            "Nothing was issued or recorded, and the token was not marked as used."
        )
    }
}

fn write_offer(f: &mut fmt::Formatter<'_>, offer: &OfferReport) -> fmt::Result {
    let mut text = format!(
        "logins {}; hosts {}; certificate TTL up to {}; task TTL up to {}",
        list(&offer.logins),
        list(&offer.hosts),
        seconds(offer.max_cert_ttl_seconds),
        seconds(offer.max_task_ttl_seconds),
    );
    if !offer.extensions.is_empty() {
        let _ = write!(text, "; extensions {}", offer.extensions.join(", "));
    }
    if let Some(command) = &offer.force_command {
        let _ = write!(text, "; force-command {command:?}");
    }
    if let Some(addresses) = &offer.source_address {
        let _ = write!(text, "; source-address {}", addresses.join(","));
    }
    writeln!(f, "       offers   {text}")?;
    for unusable in &offer.unusable_logins {
        writeln!(
            f,
            "       unusable login template {:?}: {}",
            unusable.template, unusable.reason
        )?;
    }
    Ok(())
}

fn request_summary(request: &RequestReport) -> String {
    let ttl = |t: Option<u64>| t.map_or_else(|| "default".to_owned(), seconds);
    format!(
        "logins {}; hosts {}; certificate TTL {}; task TTL {}",
        list(&request.logins),
        list(&request.hosts),
        ttl(request.cert_ttl_seconds),
        ttl(request.task_ttl_seconds),
    )
}

fn grant_summary(grant: &GrantReport) -> String {
    let mut text = format!(
        "logins {}; hosts {}; certificate TTL {}; task TTL {}",
        list(&grant.logins),
        list(&grant.hosts),
        seconds(grant.cert_ttl_seconds),
        seconds(grant.task_ttl_seconds),
    );
    if !grant.extensions.is_empty() {
        let _ = write!(text, "; extensions {}", grant.extensions.join(", "));
    }
    if let Some(command) = &grant.force_command {
        let _ = write!(text, "; force-command {command:?}");
    }
    if let Some(addresses) = &grant.source_address {
        let _ = write!(text, "; source-address {}", addresses.join(","));
    }
    text
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_owned()
    } else {
        items.join(", ")
    }
}

fn seconds(secs: u64) -> String {
    duration::format(Duration::from_secs(secs))
}

/// Every claim as `(dotted path, compact JSON value)`, nested objects flattened. A path printed here is a path a policy's `claims` can name.
fn flatten_claims(prefix: &str, claims: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (name, value) in claims {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Object(inner) if !inner.is_empty() => flatten_claims(&path, inner, out),
            other => out.push((path, other.to_string())),
        }
    }
}

/// `2026-01-01T00:00:00Z (in 4m 59s)` / `(3m ago)`.
fn when(unix: i64, now: i64) -> String {
    let relative = match unix - now {
        0 => "now".to_owned(),
        d if d > 0 => format!("in {}", seconds(d.unsigned_abs())),
        d => format!("{} ago", seconds(d.unsigned_abs())),
    };
    format!("{} ({relative})", format_time(unix))
}

fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn rfc3339<S: Serializer>(unix: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_time(*unix))
}

fn rfc3339_opt<S: Serializer>(unix: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
    match unix {
        Some(unix) => rfc3339(unix, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
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
logins = ["deploy"]
hosts = ["*"]
"#;

    fn segment(value: &Value) -> String {
        Base64UrlUnpadded::encode_string(value.to_string().as_bytes())
    }

    #[tokio::test]
    async fn refused_tokens_show_unverified_claims_but_never_the_token() {
        let config = Config::parse(CONFIG, Path::new("writ.toml")).expect("config");
        let token = format!(
            "{}.{}.c2lnbmF0dXJl",
            segment(&serde_json::json!({"alg": "RS256", "kid": "k1"})),
            segment(&serde_json::json!({
                "iss": "https://k8s.example", "sub": "system:serviceaccount:ci:bot",
                "aud": "writ", "exp": 1_000, "iat": 400
            })),
        );
        let explanation = explain(&config, &token, &ExplainRequest::default(), 2_000).await;
        assert_eq!(explanation.outcome(), Outcome::TokenRefused);
        let text = explanation.to_string();
        let json = explanation.to_json().expect("json");
        for out in [&text, &json] {
            assert!(!out.contains(&token), "the token is never printed");
            assert!(!out.contains("c2lnbmF0dXJl"), "not even its signature");
        }
        assert!(text.contains("configured issuer \"k8s\""), "{text}");
        assert!(text.contains("system:serviceaccount:ci:bot"), "{text}");
        assert!(
            text.contains("1970-01-01T00:16:40Z (16m 40s ago)"),
            "{text}"
        );
        let value: Value = serde_json::from_str(&json).expect("parse");
        assert_eq!(value["token"]["status"], "refused");
        assert_eq!(value["token"]["unverified"]["kid"], "k1");
        assert_eq!(value["decision"], Value::Null);
    }

    #[test]
    fn claims_flatten_to_policy_paths() {
        let Value::Object(claims) = serde_json::json!({
            "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "bot"}},
            "groups": ["a", "b"], "repository_id": 42, "empty": {}
        }) else {
            panic!("object")
        };
        let mut rows = Vec::new();
        flatten_claims("", &claims, &mut rows);
        rows.sort();
        let rows: Vec<(&str, &str)> = rows.iter().map(|(p, v)| (p.as_str(), v.as_str())).collect();
        assert_eq!(
            rows,
            [
                ("empty", "{}"),
                ("groups", "[\"a\",\"b\"]"),
                ("kubernetes.io.namespace", "\"ci\""),
                ("kubernetes.io.serviceaccount.name", "\"bot\""),
                ("repository_id", "42"),
            ]
        );
        for (path, _) in rows {
            assert!(crate::policy::claim_at(&claims, path).is_some(), "{path}");
        }
    }
}

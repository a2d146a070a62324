//! Standing-access inventories on the CA's side: checking a host's report
//! (`writ-principals inventory --report`, the document of
//! [`writ_principals::inventory::model`]) and turning it into what the store keeps — the
//! host's summary and one finding per static key of a login and per unencrypted private
//! key. Pure: no I/O, no clock.
//!
//! Never stores anything of a key but its type, size, fingerprint and where it is; every
//! string from the report is bounded, and a report that breaks a bound is refused whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use writ_principals::inventory::model::{self, Verdict};

use crate::store::{Finding, FindingKind};

/// Largest report body accepted (`POST /v1/inventory`): 10,000 keys with their files and
/// options fit in a few MiB.
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;
/// Most accounts, authorized keys (in all) or private keys one report may list.
pub const MAX_ITEMS: usize = 100_000;
/// Longest string kept from a report (paths, comments, options, problems).
pub const MAX_TEXT: usize = 1024;

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not format version 1.
    #[error("inventory format version {0} is not supported (this CA reads version 1)")]
    Version(u32),
    /// More than [`MAX_ITEMS`] of something.
    #[error("the report lists more than {MAX_ITEMS} {0}")]
    TooMany(&'static str),
    /// A fingerprint that is not `SHA256:` and 43 base64 characters.
    #[error("{0:?} is not a SHA256 fingerprint")]
    Fingerprint(String),
}

/// One login of a host, as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSummary {
    /// The login.
    pub login: String,
    /// Its verdict (`writ-only`, `static-keys`, `password`, `unmanaged`, `no-login`).
    pub verdict: String,
    /// Its static keys.
    pub static_key_count: u64,
    /// The oldest modification time of a file holding them.
    pub oldest_key_mtime: Option<i64>,
}

/// What the store keeps of a host's report besides its findings (`inventory_hosts.summary`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    /// When the host took the inventory (its clock).
    pub generated_at: u64,
    /// Accounts per verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Logins that are not `no-login` without keys, or that have static keys.
    pub logins: Vec<LoginSummary>,
    /// What is missing for writ enforcement.
    pub enforcement_problems: Vec<String>,
    /// Encrypted private keys found (not listed).
    pub encrypted_private_keys: u64,
    /// Whether sshd allows passwords globally.
    pub password_authentication: bool,
    /// sshd's error, when `sshd -T` failed on the host.
    pub sshd_error: Option<String>,
    /// Whether a bound cut the host's inventory short.
    pub limits_hit: bool,
}

/// A report, checked and converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedReport {
    /// The host name the report is for (lowercase).
    pub host: String,
    /// Whether writ enforcement is fully configured on the host.
    pub writ_enforced: bool,
    /// Its summary.
    pub summary: HostSummary,
    /// Its findings: one per (login, fingerprint) and per private key file.
    pub findings: Vec<Finding>,
}

#[derive(Serialize)]
struct StaticKeyDetail<'a> {
    key_type: &'a str,
    bits: u32,
    comment: String,
    options: Vec<String>,
    cert_authority: bool,
    /// `FILE:LINE` of each entry with this key.
    locations: Vec<String>,
    /// The oldest modification time of those files.
    file_mtime: i64,
}

#[derive(Serialize)]
struct PrivateKeyDetail<'a> {
    format: &'a str,
    key_type: String,
    owner: String,
    mode: String,
    mtime: i64,
}

fn bounded(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_TEXT)
        .collect()
}

fn fingerprint(text: &str) -> Result<String, ReportError> {
    let ok = text.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    });
    if ok {
        Ok(text.to_owned())
    } else {
        Err(ReportError::Fingerprint(
            bounded(text).chars().take(80).collect(),
        ))
    }
}

/// Check `report` and convert it (see the module documentation).
pub fn check(report: &model::Inventory) -> Result<CheckedReport, ReportError> {
    if report.version != model::VERSION {
        return Err(ReportError::Version(report.version));
    }
    if report.accounts.len() > MAX_ITEMS {
        return Err(ReportError::TooMany("accounts"));
    }
    if report.private_keys.len() > MAX_ITEMS {
        return Err(ReportError::TooMany("private keys"));
    }
    let keys: usize = report
        .accounts
        .iter()
        .map(|a| a.authorized_keys.len())
        .sum();
    if keys > MAX_ITEMS {
        return Err(ReportError::TooMany("authorized keys"));
    }
    let mut findings = Vec::new();
    let mut logins = Vec::new();
    for account in &report.accounts {
        let login = bounded(&account.login);
        // One finding per key of a login, wherever it is listed.
        let mut by_key: BTreeMap<String, Vec<&model::AuthorizedKey>> = BTreeMap::new();
        for key in &account.authorized_keys {
            by_key
                .entry(fingerprint(&key.fingerprint)?)
                .or_default()
                .push(key);
        }
        for (fingerprint, entries) in by_key {
            let first = entries[0];
            let detail = StaticKeyDetail {
                key_type: &first.key_type,
                bits: first.bits,
                comment: bounded(&first.comment),
                options: first.options.iter().take(64).map(|o| bounded(o)).collect(),
                cert_authority: entries.iter().any(|e| e.cert_authority),
                locations: entries
                    .iter()
                    .take(64)
                    .map(|e| format!("{}:{}", bounded(&e.file), e.line))
                    .collect(),
                file_mtime: entries.iter().map(|e| e.file_mtime).min().unwrap_or(0),
            };
            findings.push(Finding {
                kind: FindingKind::StaticKey,
                subject: login.clone(),
                fingerprint,
                detail: serde_json::to_string(&detail).unwrap_or_default(),
            });
        }
        if account.verdict != Verdict::NoLogin || account.static_key_count > 0 {
            logins.push(LoginSummary {
                login,
                verdict: account.verdict.as_str().to_owned(),
                static_key_count: account.static_key_count,
                oldest_key_mtime: account.oldest_key_mtime,
            });
        }
    }
    for key in &report.private_keys {
        let fingerprint = match &key.fingerprint {
            Some(f) => fingerprint(f)?,
            None => String::new(),
        };
        let detail = PrivateKeyDetail {
            format: key.format.as_str(),
            key_type: bounded(&key.key_type),
            owner: bounded(&key.owner),
            mode: bounded(&key.mode),
            mtime: key.mtime,
        };
        findings.push(Finding {
            kind: FindingKind::PrivateKey,
            subject: bounded(&key.path),
            fingerprint,
            detail: serde_json::to_string(&detail).unwrap_or_default(),
        });
    }
    let verdicts = Verdict::ALL
        .iter()
        .map(|v| (v.as_str().to_owned(), report.summary.count(*v)))
        .collect();
    Ok(CheckedReport {
        host: report.host.to_ascii_lowercase(),
        writ_enforced: report.writ_enforced,
        summary: HostSummary {
            generated_at: report.generated_at,
            verdicts,
            logins,
            enforcement_problems: report
                .enforcement_problems
                .iter()
                .take(64)
                .map(|p| bounded(p))
                .collect(),
            encrypted_private_keys: report.encrypted_private_keys,
            password_authentication: report.sshd.password_authentication,
            sshd_error: report.sshd.error.as_deref().map(bounded),
            limits_hit: report.limits_hit,
        },
        findings,
    })
}

/// The audit record's reason for a report: accounts per verdict and what changed.
pub fn audit_reason(summary: &HostSummary, new_findings: usize, gone: usize) -> String {
    let verdicts: Vec<String> = summary
        .verdicts
        .iter()
        .map(|(verdict, count)| format!("{verdict}={count}"))
        .collect();
    format!(
        "{} new_findings={new_findings} gone={gone}",
        verdicts.join(" ")
    )
}

//! `writ admin inventory`: the fleet's standing access, from the inventories hosts report
//! (`writ-principals inventory --report`, `POST /v1/inventory`) — which hosts enforce
//! writ, which logins still take static keys and since when, keys found on several hosts,
//! unencrypted private keys (and what they open), hosts that stopped reporting, and with
//! `--since`, what appeared and went.
//!
//! Reads the store only; never changes it, and never shows more of a key than its type,
//! fingerprint, comment and where it is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AdminError, Context, Render, Status, emit, pretty};
use crate::inventory::HostSummary;
use crate::store::{FindingKind, StoredFinding};

/// `writ admin inventory` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InventoryArgs {
    /// Only hosts whose name matches this glob (`*` and `?`).
    #[arg(long, value_name = "PATTERN")]
    pub host: Option<String>,
    /// Also show what changed since then: findings that appeared (a new static key is the
    /// alert to act on) and went. A duration ago (`24h`, `7d`), RFC 3339, or Unix seconds.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// A host whose last report is older than this has stopped reporting.
    #[arg(long, value_name = "DURATION", default_value = "48h")]
    pub stale: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why `writ admin inventory` could not run.
#[derive(Debug, thiserror::Error)]
pub enum InventoryCommandError {
    /// `--since` or `--stale` does not parse.
    #[error("{0}")]
    BadArgument(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// One host of the fleet view.
#[derive(Debug, Serialize)]
pub struct HostLine {
    /// Its name.
    pub host: String,
    /// When its last report arrived (Unix seconds).
    pub reported_at: i64,
    /// Whether writ enforcement is fully configured there.
    pub writ_enforced: bool,
    /// Whether its last report is older than `--stale`.
    pub stopped_reporting: bool,
    /// Accounts per verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// What is missing for writ enforcement.
    pub enforcement_problems: Vec<String>,
}

/// A static key of a login on a host.
#[derive(Debug, Serialize)]
pub struct StaticKeyLine {
    /// The host.
    pub host: String,
    /// The login whose authorized_keys hold it.
    pub login: String,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// Type, comment, options, where, file time (as the host reported them).
    pub detail: serde_json::Value,
    /// The first report that had it (Unix seconds).
    pub first_seen: i64,
}

/// A key in the authorized_keys of several hosts: the worst case.
#[derive(Debug, Serialize)]
pub struct SharedKey {
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The hosts.
    pub hosts: Vec<String>,
    /// The logins, on any of them.
    pub logins: Vec<String>,
}

/// An unencrypted private key on a host.
#[derive(Debug, Serialize)]
pub struct PrivateKeyLine {
    /// The host.
    pub host: String,
    /// The file.
    pub path: String,
    /// `SHA256:…` of its public half (empty when the host could not derive it).
    pub fingerprint: String,
    /// Format, type, owner, mode, time.
    pub detail: serde_json::Value,
    /// `HOST/LOGIN` whose authorized_keys accept it.
    pub opens: Vec<String>,
}

/// A finding that appeared or went since `--since`.
#[derive(Debug, Serialize)]
pub struct Change {
    /// `new` or `gone`.
    pub change: &'static str,
    /// When (Unix seconds).
    pub at: i64,
    /// The host.
    pub host: String,
    /// `static_key` or `private_key`.
    pub kind: &'static str,
    /// The login (static key) or path (private key).
    pub subject: String,
    /// `SHA256:…`.
    pub fingerprint: String,
}

/// The fleet view.
#[derive(Debug, Serialize)]
pub struct FleetReport {
    /// When it was made (Unix seconds).
    pub now: i64,
    /// Hosts that reported.
    pub hosts: Vec<HostLine>,
    /// Hosts with writ enforcement fully configured.
    pub writ_enforced: usize,
    /// Hosts whose last report is older than `--stale`.
    pub stopped_reporting: usize,
    /// Static keys, by host and login.
    pub static_keys: Vec<StaticKeyLine>,
    /// Keys in the authorized_keys of more than one host.
    pub shared_keys: Vec<SharedKey>,
    /// Unencrypted private keys.
    pub private_keys: Vec<PrivateKeyLine>,
    /// With `--since`: the time, and what appeared and went since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// With `--since`: the changes, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<Change>>,
}

/// A time given as a duration ago, RFC 3339, or Unix seconds.
fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    if let Ok(unix) = text.trim().parse::<i64>() {
        return Ok(unix);
    }
    if let Ok(t) = OffsetDateTime::parse(text.trim(), &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let ago = writ_formats::duration::parse(text).map_err(|_| {
        format!(
            "--since {text:?}: give a duration ago (\"24h\", \"7d\"), an RFC 3339 time or Unix \
             seconds"
        )
    })?;
    Ok(now.saturating_sub(writ_formats::duration::secs(ago)))
}

fn detail(finding: &StoredFinding) -> serde_json::Value {
    serde_json::from_str(&finding.finding.detail).unwrap_or(serde_json::Value::Null)
}

/// Build the fleet view at `now` (Unix seconds).
pub async fn fleet(
    context: &Context,
    args: &InventoryArgs,
    now: i64,
) -> Result<FleetReport, InventoryCommandError> {
    let stale = writ_formats::duration::parse(&args.stale)
        .map_err(|e| InventoryCommandError::BadArgument(format!("--stale: {e}")))?;
    let since = args
        .since
        .as_deref()
        .map(|t| parse_time(t, now))
        .transpose()
        .map_err(InventoryCommandError::BadArgument)?;
    let store = super::open_store(&context.config).await?;
    let inventory = store.inventory(since).await?;
    let wanted = |host: &str| {
        args.host
            .as_deref()
            .is_none_or(|pattern| crate::glob::matches(&pattern.to_ascii_lowercase(), host))
    };
    Ok(assemble(inventory, &wanted, stale, since, now))
}

fn assemble(
    inventory: crate::store::Inventory,
    wanted: &dyn Fn(&str) -> bool,
    stale: Duration,
    since: Option<i64>,
    now: i64,
) -> FleetReport {
    let stale_before = now.saturating_sub(writ_formats::duration::secs(stale));
    let hosts: Vec<HostLine> = inventory
        .hosts
        .iter()
        .filter(|h| wanted(&h.host))
        .map(|h| {
            let summary: Option<HostSummary> = serde_json::from_str(&h.summary).ok();
            HostLine {
                host: h.host.clone(),
                reported_at: h.reported_at,
                writ_enforced: h.writ_enforced,
                stopped_reporting: h.reported_at < stale_before,
                verdicts: summary
                    .as_ref()
                    .map(|s| s.verdicts.clone())
                    .unwrap_or_default(),
                enforcement_problems: summary.map(|s| s.enforcement_problems).unwrap_or_default(),
            }
        })
        .collect();
    let findings: Vec<&StoredFinding> = inventory
        .findings
        .iter()
        .filter(|f| wanted(&f.host))
        .collect();
    let live = || findings.iter().copied().filter(|f| f.gone_at.is_none());
    let static_keys: Vec<StaticKeyLine> = live()
        .filter(|f| f.finding.kind == FindingKind::StaticKey)
        .map(|f| StaticKeyLine {
            host: f.host.clone(),
            login: f.finding.subject.clone(),
            fingerprint: f.finding.fingerprint.clone(),
            detail: detail(f),
            first_seen: f.first_seen,
        })
        .collect();
    let mut by_fingerprint: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for key in &static_keys {
        let entry = by_fingerprint.entry(&key.fingerprint).or_default();
        entry.0.insert(&key.host);
        entry.1.insert(&key.login);
    }
    let shared_keys = by_fingerprint
        .iter()
        .filter(|(_, (hosts, _))| hosts.len() > 1)
        .map(|(fingerprint, (hosts, logins))| SharedKey {
            fingerprint: (*fingerprint).to_owned(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            logins: logins.iter().map(|l| (*l).to_owned()).collect(),
        })
        .collect();
    let private_keys = live()
        .filter(|f| f.finding.kind == FindingKind::PrivateKey)
        .map(|f| PrivateKeyLine {
            host: f.host.clone(),
            path: f.finding.subject.clone(),
            fingerprint: f.finding.fingerprint.clone(),
            detail: detail(f),
            opens: static_keys
                .iter()
                .filter(|k| {
                    !f.finding.fingerprint.is_empty() && k.fingerprint == f.finding.fingerprint
                })
                .map(|k| format!("{}/{}", k.host, k.login))
                .collect(),
        })
        .collect();
    let changes = since.map(|since| {
        let mut changes: Vec<Change> = Vec::new();
        for f in &findings {
            let mut push = |change: &'static str, at: i64| {
                changes.push(Change {
                    change,
                    at,
                    host: f.host.clone(),
                    kind: f.finding.kind.as_str(),
                    subject: f.finding.subject.clone(),
                    fingerprint: f.finding.fingerprint.clone(),
                });
            };
            if f.first_seen >= since {
                push("new", f.first_seen);
            }
            if let Some(gone) = f.gone_at.filter(|g| *g >= since) {
                push("gone", gone);
            }
        }
        changes.sort_by(|a, b| (a.at, &a.host, &a.subject).cmp(&(b.at, &b.host, &b.subject)));
        changes
    });
    FleetReport {
        now,
        writ_enforced: hosts.iter().filter(|h| h.writ_enforced).count(),
        stopped_reporting: hosts.iter().filter(|h| h.stopped_reporting).count(),
        hosts,
        static_keys,
        shared_keys,
        private_keys,
        since,
        changes,
    }
}

fn text_of(value: &serde_json::Value, key: &str) -> String {
    value
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

impl Render for FleetReport {
    fn text(&self) -> String {
        let mut out = String::new();
        let distance = |t: i64| crate::cli::distance(t, self.now);
        let _ = writeln!(
            out,
            "hosts          {} reporting, {} with writ enforcement, {} stopped reporting",
            self.hosts.len(),
            self.writ_enforced,
            self.stopped_reporting
        );
        for h in &self.hosts {
            let verdicts: Vec<String> = h
                .verdicts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(v, n)| format!("{v}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<32} {:<13} reported {}{}  {}",
                h.host,
                if h.writ_enforced {
                    "enforced"
                } else {
                    "NOT enforced"
                },
                distance(h.reported_at),
                if h.stopped_reporting {
                    " (stopped reporting)"
                } else {
                    ""
                },
                verdicts.join(" ")
            );
            for problem in &h.enforcement_problems {
                let _ = writeln!(out, "      - {problem}");
            }
        }
        let _ = writeln!(out, "static keys    {}", self.static_keys.len());
        for k in &self.static_keys {
            let _ = writeln!(
                out,
                "  {}/{}  {} {} {:?}  seen since {}",
                k.host,
                k.login,
                text_of(&k.detail, "key_type"),
                k.fingerprint,
                text_of(&k.detail, "comment"),
                distance(k.first_seen)
            );
        }
        let _ = writeln!(
            out,
            "shared keys    {} (one key on several hosts)",
            self.shared_keys.len()
        );
        for s in &self.shared_keys {
            let _ = writeln!(
                out,
                "  {}  hosts {}  logins {}",
                s.fingerprint,
                s.hosts.join(", "),
                s.logins.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "private keys   {} unencrypted",
            self.private_keys.len()
        );
        for p in &self.private_keys {
            let opens = if p.opens.is_empty() {
                String::new()
            } else {
                format!("  opens {}", p.opens.join(", "))
            };
            let _ = writeln!(
                out,
                "  {}:{}  {} {}{opens}",
                p.host,
                p.path,
                text_of(&p.detail, "format"),
                if p.fingerprint.is_empty() {
                    "(fingerprint unknown)"
                } else {
                    &p.fingerprint
                }
            );
        }
        if let (Some(since), Some(changes)) = (self.since, &self.changes) {
            let _ = writeln!(
                out,
                "since {}   {} change(s)",
                crate::cli::time_and_distance(since, self.now),
                changes.len()
            );
            for c in changes {
                let _ = writeln!(
                    out,
                    "  {:<4} {}  {} {}:{} {}",
                    c.change,
                    distance(c.at),
                    c.kind,
                    c.host,
                    c.subject,
                    c.fingerprint
                );
            }
        }
        out
    }

    fn json(&self) -> String {
        pretty(self)
    }
}

/// Run `writ admin inventory`.
pub async fn run(
    context: &Context,
    args: InventoryArgs,
    out: &mut dyn Write,
) -> Result<Status, AdminError> {
    let now = context.now().unix_timestamp();
    let report = fleet(context, &args, now).await?;
    emit(out, &report, args.json)?;
    Ok(Status::Success)
}

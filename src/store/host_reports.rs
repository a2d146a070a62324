//! What hosts report about themselves, as the store keeps it: the revocation feed each
//! host last applied (`writ admin task revoke` counts acknowledgements with it) and each
//! host's standing-access inventory (`writ admin inventory`), with the pure comparison
//! of a new inventory against the findings already stored and the SQL both backends run.
//! Plain data and pure functions: nothing here reads a clock or opens a connection.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::audit::AuditEntry;

/// The revocation feed a host last applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedApplied {
    /// The host's name (as its `role = "host"` policy lets it speak for).
    pub host: String,
    /// Issuer name of the host's workload identity.
    pub issuer: String,
    /// Subject of the host's workload identity.
    pub subject: String,
    /// The applied feed's sequence.
    pub sequence: i64,
    /// When the host applied it (Unix seconds, the host's clock).
    pub applied_at: i64,
    /// When the CA received the report (Unix seconds).
    pub reported_at: i64,
}

/// The kind of a standing credential a host reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    /// A public key in a login's `authorized_keys` (standing inbound access).
    StaticKey,
    /// An unencrypted private key in a file (a standing outbound credential).
    PrivateKey,
}

impl FindingKind {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::StaticKey => "static_key",
            FindingKind::PrivateKey => "private_key",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<FindingKind> {
        match text {
            "static_key" => Some(FindingKind::StaticKey),
            "private_key" => Some(FindingKind::PrivateKey),
            _ => None,
        }
    }
}

/// One standing credential as a host reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub kind: FindingKind,
    /// The login whose `authorized_keys` hold it, or the private key's path.
    pub subject: String,
    /// SHA256 fingerprint (`""` for a private key whose public half could not be derived).
    pub fingerprint: String,
    /// What else the host said about it (JSON object: files, lines, type, comment…).
    pub detail: String,
}

impl Finding {
    fn key(&self) -> (FindingKind, &str, &str) {
        (self.kind, &self.subject, &self.fingerprint)
    }
}

/// A finding as stored, with when it was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFinding {
    /// Row id.
    pub id: i64,
    /// The host that reported it.
    pub host: String,
    /// The finding.
    pub finding: Finding,
    /// The report that first had it (Unix seconds).
    pub first_seen: i64,
    /// The latest report that still had it.
    pub last_seen: i64,
    /// The first report without it, once it is gone.
    pub gone_at: Option<i64>,
}

/// A host's latest inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryHost {
    /// The host's name.
    pub host: String,
    /// Issuer name of the host's workload identity.
    pub issuer: String,
    /// Subject of the host's workload identity.
    pub subject: String,
    /// When the CA received the report (Unix seconds).
    pub reported_at: i64,
    /// Whether writ enforcement is fully configured on the host.
    pub writ_enforced: bool,
    /// The report's summary (JSON object).
    pub summary: String,
}

/// Builds the audit entries of an inventory report from what changed, inside its
/// transaction.
pub type InventoryAuditFor = Box<dyn FnOnce(&InventoryChange) -> Vec<AuditEntry> + Send>;

/// One host's inventory report, recorded whole or not at all.
pub struct InventoryUpdate {
    /// The host and its summary (replaces the stored one).
    pub host: InventoryHost,
    /// Every finding of the report.
    pub findings: Vec<Finding>,
    /// The audit entries, built from what changed.
    pub audit: InventoryAuditFor,
    /// The report's time: its audit records carry it.
    pub at: OffsetDateTime,
}

/// What a report changed: findings no earlier report had (or that came back), and those
/// that earlier reports had and this one no longer has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryChange {
    /// New findings.
    pub new: Vec<Finding>,
    /// Findings gone.
    pub gone: Vec<StoredFinding>,
}

/// The fleet's inventory: every host's latest report, and the findings still present
/// (plus, when asked, those gone since a time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Hosts, by name.
    pub hosts: Vec<InventoryHost>,
    /// Findings, by host, kind, subject and fingerprint.
    pub findings: Vec<StoredFinding>,
}

/// How a report compares with the live findings stored for its host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Reported and not live: insert.
    pub new: Vec<Finding>,
    /// Live and reported again with a different detail: (row id, new detail).
    pub changed_detail: Vec<(i64, String)>,
    /// Live and not reported: mark gone.
    pub gone: Vec<StoredFinding>,
}

/// Compare `reported` (duplicates count once, the first wins) with the host's `live`
/// findings.
pub fn compare(live: Vec<StoredFinding>, reported: Vec<Finding>) -> Comparison {
    let mut by_key: HashMap<(FindingKind, String, String), StoredFinding> = live
        .into_iter()
        .map(|f| {
            let key = (
                f.finding.kind,
                f.finding.subject.clone(),
                f.finding.fingerprint.clone(),
            );
            (key, f)
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut comparison = Comparison::default();
    for finding in reported {
        let (kind, subject, fingerprint) = finding.key();
        let key = (kind, subject.to_owned(), fingerprint.to_owned());
        if !seen.insert(key.clone()) {
            continue;
        }
        match by_key.remove(&key) {
            Some(stored) if stored.finding.detail != finding.detail => {
                comparison.changed_detail.push((stored.id, finding.detail));
            }
            Some(_) => {}
            None => comparison.new.push(finding),
        }
    }
    comparison.gone = by_key.into_values().collect();
    comparison.gone.sort_by_key(|f| f.id);
    comparison
}

/// Record (or overwrite) the feed a host applied: `$1` host, `$2` issuer, `$3` subject,
/// `$4` sequence, `$5` applied_at, `$6` reported_at.
pub(crate) const SQL_UPSERT_FEED_APPLIED: &str = "INSERT INTO host_feeds \
     (host, issuer, subject, sequence, applied_at, reported_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (host) DO UPDATE SET issuer = excluded.issuer, subject = excluded.subject, \
     sequence = excluded.sequence, applied_at = excluded.applied_at, \
     reported_at = excluded.reported_at";
/// Every host's applied feed.
pub(crate) const SQL_FEEDS_APPLIED: &str = "SELECT host, issuer, subject, sequence, applied_at, \
     reported_at FROM host_feeds ORDER BY host";
/// Record (or overwrite) a host's latest inventory: `$1` host … `$6` summary. On
/// PostgreSQL the row stays locked until the commit, so two reports of one host apply one
/// after the other.
pub(crate) const SQL_UPSERT_INVENTORY_HOST: &str = "INSERT INTO inventory_hosts \
     (host, issuer, subject, reported_at, writ_enforced, summary) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (host) DO UPDATE SET issuer = excluded.issuer, subject = excluded.subject, \
     reported_at = excluded.reported_at, writ_enforced = excluded.writ_enforced, \
     summary = excluded.summary";
/// A host's live findings (`$1` host), columns in [`StoredFinding`]'s order.
pub(crate) const SQL_LIVE_FINDINGS: &str = "SELECT id, host, kind, subject, fingerprint, \
     detail, first_seen, last_seen, gone_at FROM inventory_findings \
     WHERE host = $1 AND gone_at IS NULL";
/// Add a finding: `$1` host, `$2` kind, `$3` subject, `$4` fingerprint, `$5` detail,
/// `$6` first_seen (= last_seen).
pub(crate) const SQL_INSERT_FINDING: &str = "INSERT INTO inventory_findings \
     (host, kind, subject, fingerprint, detail, first_seen, last_seen) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";
/// Mark a finding gone: `$1` time, `$2` id.
pub(crate) const SQL_FINDING_GONE: &str =
    "UPDATE inventory_findings SET gone_at = $1 WHERE id = $2";
/// Replace a finding's detail: `$1` detail, `$2` id.
pub(crate) const SQL_FINDING_DETAIL: &str =
    "UPDATE inventory_findings SET detail = $1 WHERE id = $2";
/// Every live finding of a host was seen again: `$1` time, `$2` host. (Placeholders
/// appear in number order: SQLite numbers `$N` by first appearance.)
pub(crate) const SQL_FINDINGS_SEEN: &str =
    "UPDATE inventory_findings SET last_seen = $1 WHERE host = $2 AND gone_at IS NULL";
/// Every host's latest inventory.
pub(crate) const SQL_INVENTORY_HOSTS: &str = "SELECT host, issuer, subject, reported_at, \
     writ_enforced, summary FROM inventory_hosts ORDER BY host";
/// Live findings, and those gone at or after `$1`.
pub(crate) const SQL_FINDINGS: &str = "SELECT id, host, kind, subject, fingerprint, detail, \
     first_seen, last_seen, gone_at FROM inventory_findings \
     WHERE gone_at IS NULL OR gone_at >= $1 ORDER BY host, kind, subject, fingerprint, id";

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: FindingKind, subject: &str, fingerprint: &str, detail: &str) -> Finding {
        Finding {
            kind,
            subject: subject.into(),
            fingerprint: fingerprint.into(),
            detail: detail.into(),
        }
    }

    fn stored(id: i64, finding: Finding) -> StoredFinding {
        StoredFinding {
            id,
            host: "web-1".into(),
            finding,
            first_seen: 10,
            last_seen: 20,
            gone_at: None,
        }
    }

    #[test]
    fn a_report_is_split_into_new_changed_and_gone() {
        let kept = finding(FindingKind::StaticKey, "deploy", "SHA256:a", "{}");
        let edited = finding(FindingKind::StaticKey, "deploy", "SHA256:b", "{}");
        let dropped = finding(FindingKind::PrivateKey, "/root/id", "SHA256:c", "{}");
        let live = vec![
            stored(1, kept.clone()),
            stored(2, edited.clone()),
            stored(3, dropped.clone()),
        ];
        let fresh = finding(FindingKind::StaticKey, "ops", "SHA256:a", "{}");
        let edited_now = Finding {
            detail: r#"{"line":2}"#.into(),
            ..edited
        };
        let comparison = compare(
            live,
            vec![kept.clone(), edited_now, fresh.clone(), fresh.clone()],
        );
        assert_eq!(comparison.new, vec![fresh]);
        assert_eq!(comparison.changed_detail, vec![(2, r#"{"line":2}"#.into())]);
        assert_eq!(comparison.gone, vec![stored(3, dropped)]);
    }

    #[test]
    fn kinds_round_trip_and_nothing_else_parses() {
        for kind in [FindingKind::StaticKey, FindingKind::PrivateKey] {
            assert_eq!(FindingKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FindingKind::parse("password"), None);
    }
}

//! Host reports in SQLite: the feed each host applied and the hosts' inventories
//! ([`crate::store::host_reports`] has the records and the SQL). Recording an inventory
//! runs on the writer, in one transaction with its audit records. Each function runs on
//! the connection it is given and never opens one itself.

use rusqlite::{Connection, Row, params};

use super::chain::Chain;
use super::rows::collect;
use crate::store::host_reports::{
    SQL_FEEDS_APPLIED, SQL_FINDING_DETAIL, SQL_FINDING_GONE, SQL_FINDINGS, SQL_FINDINGS_SEEN,
    SQL_INSERT_FINDING, SQL_INVENTORY_HOSTS, SQL_LIVE_FINDINGS, SQL_UPSERT_FEED_APPLIED,
    SQL_UPSERT_INVENTORY_HOST, compare,
};
use crate::store::{
    FeedApplied, Finding, FindingKind, Inventory, InventoryChange, InventoryHost, InventoryUpdate,
    StoreError, StoredFinding,
};

/// Record (overwrite) the feed a host applied.
pub(super) fn record_feed_applied(tx: &Connection, report: &FeedApplied) -> Result<(), StoreError> {
    tx.prepare_cached(SQL_UPSERT_FEED_APPLIED)?
        .execute(params![
            report.host,
            report.issuer,
            report.subject,
            report.sequence,
            report.applied_at,
            report.reported_at,
        ])?;
    Ok(())
}

/// Every host's applied feed.
pub(super) fn feeds_applied(db: &Connection) -> Result<Vec<FeedApplied>, StoreError> {
    let mut statement = db.prepare_cached(SQL_FEEDS_APPLIED)?;
    collect(statement.query([])?, |row| {
        Ok(FeedApplied {
            host: row.get(0)?,
            issuer: row.get(1)?,
            subject: row.get(2)?,
            sequence: row.get(3)?,
            applied_at: row.get(4)?,
            reported_at: row.get(5)?,
        })
    })
}

/// Record an inventory report in the writer's transaction `tx`.
pub(super) fn record_inventory(
    tx: &Connection,
    update: InventoryUpdate,
) -> Result<InventoryChange, StoreError> {
    let host = &update.host;
    let at = host.reported_at;
    tx.prepare_cached(SQL_UPSERT_INVENTORY_HOST)?
        .execute(params![
            host.host,
            host.issuer,
            host.subject,
            at,
            i64::from(host.writ_enforced),
            host.summary,
        ])?;
    let live = collect(
        tx.prepare_cached(SQL_LIVE_FINDINGS)?.query([&host.host])?,
        stored_finding,
    )?;
    let comparison = compare(live, update.findings);
    for gone in &comparison.gone {
        tx.prepare_cached(SQL_FINDING_GONE)?
            .execute(params![at, gone.id])?;
    }
    for (id, detail) in &comparison.changed_detail {
        tx.prepare_cached(SQL_FINDING_DETAIL)?
            .execute(params![detail, id])?;
    }
    tx.prepare_cached(SQL_FINDINGS_SEEN)?
        .execute(params![at, host.host])?;
    for finding in &comparison.new {
        tx.prepare_cached(SQL_INSERT_FINDING)?.execute(params![
            host.host,
            finding.kind.as_str(),
            finding.subject,
            finding.fingerprint,
            finding.detail,
            at,
        ])?;
    }
    let change = InventoryChange {
        new: comparison.new,
        gone: comparison
            .gone
            .into_iter()
            .map(|f| StoredFinding {
                gone_at: Some(at),
                ..f
            })
            .collect(),
    };
    Chain::append_all(tx, &(update.audit)(&change), update.at)?;
    Ok(change)
}

/// Every host's inventory, with live findings and those gone since `gone_since`.
pub(super) fn inventory(db: &Connection, gone_since: Option<i64>) -> Result<Inventory, StoreError> {
    let hosts = collect(db.prepare_cached(SQL_INVENTORY_HOSTS)?.query([])?, |row| {
        Ok(InventoryHost {
            host: row.get(0)?,
            issuer: row.get(1)?,
            subject: row.get(2)?,
            reported_at: row.get(3)?,
            writ_enforced: row.get::<_, i64>(4)? != 0,
            summary: row.get(5)?,
        })
    })?;
    let findings = collect(
        db.prepare_cached(SQL_FINDINGS)?
            .query([gone_since.unwrap_or(i64::MAX)])?,
        stored_finding,
    )?;
    Ok(Inventory { hosts, findings })
}

fn stored_finding(row: &Row<'_>) -> Result<StoredFinding, StoreError> {
    let kind: String = row.get(2)?;
    Ok(StoredFinding {
        id: row.get(0)?,
        host: row.get(1)?,
        finding: Finding {
            kind: FindingKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown finding kind {kind:?}")))?,
            subject: row.get(3)?,
            fingerprint: row.get(4)?,
            detail: row.get(5)?,
        },
        first_seen: row.get(6)?,
        last_seen: row.get(7)?,
        gone_at: row.get(8)?,
    })
}

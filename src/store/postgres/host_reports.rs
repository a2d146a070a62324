//! Host reports in PostgreSQL: the feed each host applied and the hosts' inventories
//! ([`crate::store::host_reports`] has the records and the SQL). Recording an inventory
//! first upserts the host's row, which stays locked until the commit, so two reports of
//! one host (on any replica) apply one after the other. Each function runs on the
//! connection it is given and never commits.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::chain::Chain;
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
pub(super) async fn record_feed_applied(
    conn: &mut PgConnection,
    report: &FeedApplied,
) -> Result<(), StoreError> {
    sqlx::query(SQL_UPSERT_FEED_APPLIED)
        .bind(&report.host)
        .bind(&report.issuer)
        .bind(&report.subject)
        .bind(report.sequence)
        .bind(report.applied_at)
        .bind(report.reported_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Every host's applied feed.
pub(super) async fn feeds_applied(conn: &mut PgConnection) -> Result<Vec<FeedApplied>, StoreError> {
    let rows = sqlx::query(SQL_FEEDS_APPLIED).fetch_all(conn).await?;
    rows.iter()
        .map(|row| {
            Ok(FeedApplied {
                host: row.try_get(0)?,
                issuer: row.try_get(1)?,
                subject: row.try_get(2)?,
                sequence: row.try_get(3)?,
                applied_at: row.try_get(4)?,
                reported_at: row.try_get(5)?,
            })
        })
        .collect()
}

/// Record an inventory report in the transaction `conn`.
pub(super) async fn record_inventory(
    conn: &mut PgConnection,
    update: InventoryUpdate,
) -> Result<InventoryChange, StoreError> {
    let host = &update.host;
    let at = host.reported_at;
    sqlx::query(SQL_UPSERT_INVENTORY_HOST)
        .bind(&host.host)
        .bind(&host.issuer)
        .bind(&host.subject)
        .bind(at)
        .bind(i64::from(host.writ_enforced))
        .bind(&host.summary)
        .execute(&mut *conn)
        .await?;
    let live = sqlx::query(SQL_LIVE_FINDINGS)
        .bind(&host.host)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(stored_finding)
        .collect::<Result<Vec<_>, _>>()?;
    let comparison = compare(live, update.findings);
    for gone in &comparison.gone {
        sqlx::query(SQL_FINDING_GONE)
            .bind(at)
            .bind(gone.id)
            .execute(&mut *conn)
            .await?;
    }
    for (id, detail) in &comparison.changed_detail {
        sqlx::query(SQL_FINDING_DETAIL)
            .bind(detail)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(SQL_FINDINGS_SEEN)
        .bind(at)
        .bind(&host.host)
        .execute(&mut *conn)
        .await?;
    for finding in &comparison.new {
        sqlx::query(SQL_INSERT_FINDING)
            .bind(&host.host)
            .bind(finding.kind.as_str())
            .bind(&finding.subject)
            .bind(&finding.fingerprint)
            .bind(&finding.detail)
            .bind(at)
            .execute(&mut *conn)
            .await?;
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
    Chain::append_all(conn, &(update.audit)(&change), update.at).await?;
    Ok(change)
}

/// Every host's inventory, with live findings and those gone since `gone_since`.
pub(super) async fn inventory(
    conn: &mut PgConnection,
    gone_since: Option<i64>,
) -> Result<Inventory, StoreError> {
    let hosts = sqlx::query(SQL_INVENTORY_HOSTS)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            Ok(InventoryHost {
                host: row.try_get(0)?,
                issuer: row.try_get(1)?,
                subject: row.try_get(2)?,
                reported_at: row.try_get(3)?,
                writ_enforced: row.try_get::<i64, _>(4)? != 0,
                summary: row.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let findings = sqlx::query(SQL_FINDINGS)
        .bind(gone_since.unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(stored_finding)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inventory { hosts, findings })
}

fn stored_finding(row: &PgRow) -> Result<StoredFinding, StoreError> {
    let kind: String = row.try_get(2)?;
    Ok(StoredFinding {
        id: row.try_get(0)?,
        host: row.try_get(1)?,
        finding: Finding {
            kind: FindingKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown finding kind {kind:?}")))?,
            subject: row.try_get(3)?,
            fingerprint: row.try_get(4)?,
            detail: row.try_get(5)?,
        },
        first_seen: row.try_get(6)?,
        last_seen: row.try_get(7)?,
        gone_at: row.try_get(8)?,
    })
}

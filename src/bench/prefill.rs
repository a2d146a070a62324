//! `writ bench issue --prefill-audit N`: grow the bench server's audit log by N records
//! before anything is measured, to show that issuance costs the same on a large log as on
//! an empty one (issue 7: "flat cost as data grows").
//!
//! The records are written straight into the bench server's own SQLite file through a
//! second connection (the server is idle then), in large transactions, continuing the hash
//! chain from its head, so the log still verifies. They look like real issuance records:
//! a `task.created` and a `cert.issued` per synthetic task, with time-ordered task ids and
//! time-ordered serials (`authority::serial`), so every index grows as it would in
//! production.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use time::OffsetDateTime;

use super::BenchError;
use crate::audit::{self, AuditEntry, Outcome, event};
use crate::authority::serial::new_serial;
use crate::store::sqlite::{insert_audit_row, read_chain_head};

/// Records per transaction.
const CHUNK: u64 = 100_000;

/// Append `records` synthetic issuance records to the audit log in `db`; returns how long
/// it took.
pub fn prefill_audit(
    db: &Path,
    records: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<Duration, BenchError> {
    let failed =
        |e: rusqlite::Error| BenchError::Setup(format!("prefilling {}: {e}", db.display()));
    let start = Instant::now();
    let mut connection = Connection::open(db).map_err(failed)?;
    connection
        .busy_timeout(Duration::from_secs(30))
        .map_err(failed)?;
    let time = audit::format_time(OffsetDateTime::now_utc());
    let base_millis = u64::try_from(OffsetDateTime::now_utc().unix_timestamp() * 1000)
        .unwrap_or(0)
        .saturating_sub(records);
    let mut written = 0;
    while written < records {
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        let (mut seq, mut prev) = read_chain_head(&tx).map_err(failed)?;
        let end = (written + CHUNK).min(records);
        while written < end {
            let entry = synthetic(written, base_millis);
            seq += 1;
            let hash = audit::chain_hash(seq, &time, &entry, &prev);
            insert_audit_row(&tx, seq, &time, &entry, &prev, &hash).map_err(failed)?;
            prev = hash;
            written += 1;
        }
        tx.commit().map_err(failed)?;
        progress(&format!(
            "prefill: {written} of {records} audit records ({:.0}s)",
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(start.elapsed())
}

/// Record `n`: even ones open a task, odd ones issue its certificate.
fn synthetic(n: u64, base_millis: u64) -> AuditEntry {
    let task = n / 2;
    // Time-ordered like real task ids: 48 bits of milliseconds, then 80 bits that look
    // random (the same for both records of a task).
    let scrambled =
        u128::from(task).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) & ((1 << 80) - 1);
    let task_id = format!("{:012x}{scrambled:020x}", base_millis + task);
    let name = if n.is_multiple_of(2) {
        event::TASK_CREATED
    } else {
        event::CERT_ISSUED
    };
    let mut entry = AuditEntry::new(name, Outcome::Success);
    entry.issuer = Some("bench".into());
    entry.subject = Some(format!("prefill-{}", task % 1000));
    entry.policy = Some("bench".into());
    entry.task_id = Some(task_id);
    entry.logins = vec!["deploy".into()];
    entry.hosts = vec!["*.bench.invalid".into()];
    entry.source_ip = Some("127.0.0.1".into());
    entry.request_id = Some(format!("prefill-{n}"));
    if n % 2 == 1 {
        entry.serial = Some(new_serial().to_string());
        entry.key_fingerprint = Some(format!("SHA256:prefill{task}"));
    }
    entry
}

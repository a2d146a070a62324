//! `writ bench issue --prefill-audit N`: grow the bench server's audit log by N records
//! before anything is measured, to show that issuance costs the same on a large log as on
//! an empty one (issue 7: "flat cost as data grows").
//!
//! The records are appended through the store's own write path (a second [`crate::store::Store`] on
//! the bench server's database file, while the server is idle), in large transactions,
//! so the log still verifies. They look like real issuance records: a `task.created` and
//! a `cert.issued` per synthetic task, with time-ordered task ids and time-ordered serials
//! (`authority::serial`), so every index grows as it would in production.

use std::path::Path;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use time::OffsetDateTime;

use super::BenchError;
use crate::audit::{AuditEntry, Outcome, event};
use crate::authority::serial::new_serial;

/// Records per transaction.
const CHUNK: u64 = 100_000;

/// Append `records` synthetic issuance records to the audit log in `db`; returns how long
/// it took.
pub fn prefill_audit(
    db: &Path,
    records: u64,
    progress: &mut dyn FnMut(&str),
) -> Result<Duration, BenchError> {
    let failed = |e: String| BenchError::Setup(format!("prefilling {}: {e}", db.display()));
    let start = Instant::now();
    let runtime = crate::cli::runtime().map_err(|e| failed(e.to_string()))?;
    let store = runtime
        .block_on(crate::store::open(&format!("sqlite://{}", db.display())))
        .map_err(|e| failed(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let base = now - Duration::from_millis(records);
    let mut written = 0;
    while written < records {
        let end = (written + CHUNK).min(records);
        let entries: Vec<AuditEntry> = (written..end).map(|n| synthetic(n, base)).collect();
        runtime
            .block_on(store.append_audit_entries(entries, now))
            .map_err(|e| failed(e.to_string()))?;
        written = end;
        progress(&format!(
            "prefill: {written} of {records} audit records ({:.0}s)",
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(start.elapsed())
}

/// Record `n`: even ones open a task, odd ones issue its certificate.
fn synthetic(n: u64, base: OffsetDateTime) -> AuditEntry {
    let task = n / 2;
    let created = base + Duration::from_millis(task);
    let base_millis = u64::try_from(base.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
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
        entry.serial = Some(new_serial(created, &mut OsRng).to_string());
        entry.key_fingerprint = Some(format!("SHA256:prefill{task}"));
    }
    entry
}

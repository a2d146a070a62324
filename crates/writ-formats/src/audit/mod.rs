//! Audit records and their hash chain (SPEC §6), and everything that makes the log
//! something a SIEM and an auditor can trust.
//!
//! An [`AuditEntry`] is what callers describe; the store assigns `seq` and `time`-ordered
//! position and computes the chain with [`chain_hash`] inside the same transaction as the
//! change it records, so a certificate never leaves without its record.
//!
//! Everything here is pure (no I/O): this file (record, canonical hashing), [`checkpoint`]
//! (signed statements "record N has hash H"), [`verify`] (walking the chain against
//! checkpoints), [`export`] (JSON Lines and `--since`) and [`ocsf`] (the OCSF mapping).
//! The parts that run inside `writ serve` and talk to the store — `writ::audit::sink`
//! (delivering records to JSONL files and syslog as they commit) and
//! `writ::audit::service` (the background tasks: sinks and periodic signed checkpoints) —
//! live in the `writ` crate, which re-exports this module as `writ::audit`. They only ever
//! read the log and write their own bookkeeping; nothing edits or reorders a record.

pub mod checkpoint;
pub mod export;
pub mod ocsf;
pub mod verify;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Event names (SPEC §6).
pub mod event {
    /// A workload token was refused.
    pub const TOKEN_REJECTED: &str = "token.rejected";
    /// A task was opened.
    pub const TASK_CREATED: &str = "task.created";
    /// A certificate was issued.
    pub const CERT_ISSUED: &str = "cert.issued";
    /// A certificate request was refused (policy, input).
    pub const CERT_DENIED: &str = "cert.denied";
    /// A CA key was created.
    pub const CA_KEY_CREATED: &str = "ca.key.created";
    /// The CA rotated: next → active, active → retiring, a new next (`writ admin ca rotate`
    /// or the schedule).
    pub const CA_KEY_ROTATED: &str = "ca.key.rotated";
    /// A retiring CA key retired: every certificate it signed has expired.
    pub const CA_KEY_RETIRED: &str = "ca.key.retired";
    /// A CA key was revoked in an emergency (`writ admin ca revoke`).
    pub const CA_KEY_REVOKED: &str = "ca.key.revoked";
    /// The automatic rotation schedule was set or cleared.
    pub const CA_KEY_SCHEDULED: &str = "ca.key.scheduled";
    /// Every CA key was re-encrypted with a new passphrase (`writ admin ca rewrap`).
    pub const CA_KEY_REWRAPPED: &str = "ca.key.rewrapped";
    /// The CA public keys were exported (`writ admin ca export-public`).
    pub const CA_KEY_EXPORTED: &str = "ca.key.exported";
    /// A task was completed by its owner or an admin.
    pub const TASK_COMPLETED: &str = "task.completed";
    /// A task was revoked by an admin.
    pub const TASK_REVOKED: &str = "task.revoked";
    /// A request to change or read a task was refused.
    pub const TASK_DENIED: &str = "task.denied";
    /// A certificate was revoked (alone or with its task).
    pub const CERT_REVOKED: &str = "cert.revoked";
    /// A certificate was used for a real login.
    pub const CERT_USED: &str = "cert.used";
    /// A host's use of a certificate was refused by the CA.
    pub const CERT_USE_DENIED: &str = "cert.use_denied";
    /// A host ended a session of the certificate with its task (online mode).
    pub const CERT_SESSION_ENDED: &str = "cert.session_ended";
    /// Host certificates were issued (`POST /v1/host-certificates`): one record per
    /// request, naming every serial.
    pub const HOST_CERT_ISSUED: &str = "host_cert.issued";
    /// A host certificate request was refused (policy, input, token).
    pub const HOST_CERT_DENIED: &str = "host_cert.denied";
    /// A host certificate was revoked (`writ admin host-cert revoke`): one record per
    /// certificate.
    pub const HOST_CERT_REVOKED: &str = "host_cert.revoked";
    /// A host reported its standing-access inventory (`POST /v1/inventory`): one record
    /// per report, with the count of logins per verdict and of new findings; or the
    /// report was refused (outcome failure, with the reason).
    pub const INVENTORY_REPORTED: &str = "inventory.reported";
    /// A host's report of the revocation feed it applied (`POST
    /// /v1/revocations/applied`) was refused. Accepted reports are bookkeeping, not audit
    /// records (`writ admin task revoke` reads them).
    pub const HOST_FEED_DENIED: &str = "host.feed_denied";
    /// An agent ran a command with a task (`writ mcp`'s `run`): recorded before the
    /// command starts, with the host, the login, the command and why; or the record was
    /// refused (outcome failure as `task.denied`), and nothing ran.
    pub const TASK_RUN: &str = "task.run";
    /// Old audit records were deleted up to a signed checkpoint (`writ admin audit prune`).
    pub const AUDIT_PRUNED: &str = "audit.pruned";
}

/// Outcome of the audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action happened.
    Success,
    /// The action was refused.
    Failure,
}

impl Outcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }

    /// Parse the stored spelling.
    pub fn parse(text: &str) -> Option<Outcome> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            _ => None,
        }
    }
}

/// What happened, as a caller describes it. Empty optional fields are simply absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Event name, see [`event`].
    pub event: String,
    /// Success or failure.
    pub outcome: Option<Outcome>,
    /// Token issuer (configured name) of the actor.
    pub issuer: Option<String>,
    /// Token subject of the actor.
    pub subject: Option<String>,
    /// Policy that matched.
    pub policy: Option<String>,
    /// Task concerned.
    pub task_id: Option<String>,
    /// Certificate serial (decimal).
    pub serial: Option<String>,
    /// SHA-256 fingerprint of the certified public key.
    pub key_fingerprint: Option<String>,
    /// Logins concerned.
    pub logins: Vec<String>,
    /// Host patterns concerned.
    pub hosts: Vec<String>,
    /// The SSH host that reported, for use events.
    pub host: Option<String>,
    /// Fingerprint of the CA key concerned.
    pub ca_fingerprint: Option<String>,
    /// Client address.
    pub source_ip: Option<String>,
    /// Reason code (snake_case) and detail for refusals and revocations.
    pub reason: Option<String>,
    /// Request id that ties records of one request together.
    pub request_id: Option<String>,
    /// The task's purpose, as its opener stated it (audit record format 2). Absent, it is
    /// left out of the canonical JSON, so records of format 1 hash as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The command run with a task (`task.run`; audit record format 3). Absent, it is left
    /// out of the canonical JSON, so older records hash as they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl AuditEntry {
    /// A new entry for `event` with `outcome`.
    pub fn new(event: &str, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            event: event.to_owned(),
            outcome: Some(outcome),
            ..AuditEntry::default()
        }
    }
}

/// A committed audit record: an entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// Commit time, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Hash of the previous record ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// This record's hash, see [`chain_hash`].
    pub hash: String,
}

/// The canonical body that is hashed: every field in a fixed order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    time: &'a str,
    entry: &'a AuditEntry,
    prev_hash: &'a str,
}

/// Hash of a record: lowercase hex SHA-256 over the canonical JSON of
/// `{seq, time, entry, prev_hash}` (struct field order is fixed, so the encoding is too).
pub fn chain_hash(seq: i64, time: &str, entry: &AuditEntry, prev_hash: &str) -> String {
    let body = serde_json::to_vec(&Canonical {
        seq,
        time,
        entry,
        prev_hash,
    })
    .expect("serialising plain strings to JSON cannot fail");
    hex(&Sha256::digest(&body))
}

/// Format a time the way audit records store it: RFC 3339, UTC, milliseconds.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Verify that `records` (in order) form an unbroken chain starting after `prev_hash`.
/// Returns the `seq` of the first bad record.
pub fn verify_chain<'a>(records: &'a [AuditRecord], mut prev_hash: &'a str) -> Result<(), i64> {
    for record in records {
        let expected = chain_hash(record.seq, &record.time, &record.entry, prev_hash);
        if record.prev_hash != prev_hash || record.hash != expected {
            return Err(record.seq);
        }
        prev_hash = &record.hash;
    }
    Ok(())
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Test helper: `n` records chained from the genesis hash; `record(seq)` gives each
/// one's time and entry. Built for this crate's tests and, with the `test-support`
/// feature, for the tests of `writ` (its sinks); never part of a normal build.
#[cfg(any(test, feature = "test-support"))]
pub fn chained(n: i64, mut record: impl FnMut(i64) -> (String, AuditEntry)) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    for seq in 1..=n {
        let prev_hash = out
            .last()
            .map_or(GENESIS_HASH.to_owned(), |r| r.hash.clone());
        let (time, entry) = record(seq);
        let hash = chain_hash(seq, &time, &entry, &prev_hash);
        out.push(AuditRecord {
            seq,
            time,
            entry,
            prev_hash,
            hash,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, prev: &str, entry: AuditEntry) -> AuditRecord {
        let time = format!("2026-01-01T00:00:{seq:02}.000Z");
        let hash = chain_hash(seq, &time, &entry, prev);
        AuditRecord {
            seq,
            time,
            entry,
            prev_hash: prev.to_owned(),
            hash,
        }
    }

    #[test]
    fn chain_detects_edits_and_reordering() {
        let a = record(
            1,
            GENESIS_HASH,
            AuditEntry::new(event::TASK_CREATED, Outcome::Success),
        );
        let b = record(
            2,
            &a.hash,
            AuditEntry::new(event::CERT_ISSUED, Outcome::Success),
        );
        let c = record(
            3,
            &b.hash,
            AuditEntry::new(event::CERT_DENIED, Outcome::Failure),
        );
        let log = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(verify_chain(&log, GENESIS_HASH), Ok(()));

        let mut edited = log.clone();
        edited[1].entry.subject = Some("mallory".into());
        assert_eq!(verify_chain(&edited, GENESIS_HASH), Err(2));

        assert_eq!(verify_chain(&[a.clone(), c.clone()], GENESIS_HASH), Err(3));
        assert_eq!(verify_chain(&[b, a, c], GENESIS_HASH), Err(2));
    }

    #[test]
    fn a_record_without_purpose_hashes_as_format_1_did() {
        // Computed by the code before `purpose` existed, for this exact record.
        const FORMAT_1_HASH: &str =
            "ca148772d7563ce0fe662c75325b636fa98055b45c1d9b6e8725df48f8867ede";
        let mut entry = AuditEntry::new(event::TASK_CREATED, Outcome::Success);
        entry.subject = Some("agent-1".into());
        entry.logins = vec!["deploy".into()];
        let hash = chain_hash(1, "2026-01-01T00:00:01.000Z", &entry, GENESIS_HASH);
        assert_eq!(hash, FORMAT_1_HASH);
        entry.purpose = Some("rotate logs".into());
        assert_ne!(
            chain_hash(1, "2026-01-01T00:00:01.000Z", &entry, GENESIS_HASH),
            FORMAT_1_HASH,
            "the purpose is covered by the hash"
        );
        let format_2 = chain_hash(1, "2026-01-01T00:00:01.000Z", &entry, GENESIS_HASH);
        entry.command = Some("df -h".into());
        assert_ne!(
            chain_hash(1, "2026-01-01T00:00:01.000Z", &entry, GENESIS_HASH),
            format_2,
            "the command is covered by the hash"
        );
        entry.command = None;
        assert_eq!(
            chain_hash(1, "2026-01-01T00:00:01.000Z", &entry, GENESIS_HASH),
            format_2,
            "a record without a command hashes as format 2 did"
        );
    }

    #[test]
    fn time_format_is_fixed_width() {
        let t = time::macros::datetime!(2026-11-25 08:07:06.5 UTC);
        assert_eq!(format_time(t), "2026-11-25T08:07:06.500Z");
    }
}

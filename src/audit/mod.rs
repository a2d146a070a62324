//! Audit records and their hash chain (SPEC §6), and everything that makes the log
//! something a SIEM and an auditor can trust.
//!
//! The pure parts — the record ([`AuditEntry`], [`AuditRecord`]), the canonical hash
//! ([`chain_hash`]), signed [`checkpoint`]s, chain [`verify`]cation, [`export`] and the
//! [`ocsf`] mapping — are the crate `writ_formats::audit`, re-exported here whole, so
//! `crate::audit::…` names them as before. The store assigns `seq` and `time`-ordered
//! position and computes the chain with [`chain_hash`] inside the same transaction as the
//! change it records, so a certificate never leaves without its record.
//!
//! The parts that run inside `writ serve` and talk to the store live here: [`sink`]
//! (delivering records to JSONL files and syslog as they commit) and [`service`] (the
//! background tasks: sinks and periodic signed checkpoints). They only ever read the log
//! and write their own bookkeeping; nothing here edits or reorders a record.

pub use writ_formats::audit::*;

pub mod checkpoint;
pub mod service;
pub mod sink;

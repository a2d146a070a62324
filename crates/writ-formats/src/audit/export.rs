//! How records leave writ: one JSON object per line, either writ's own record
//! ([`Format::Jsonl`], exactly the fields that are hashed plus `seq`, `time`, `prev_hash`
//! and `hash`, so anyone can re-verify the chain from an export) or an OCSF event
//! ([`Format::Ocsf`], see [`super::ocsf`]). Also the `--since`/`--before` positions the
//! admin commands accept: a sequence number or an RFC 3339 time.
//!
//! Pure.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AuditRecord, format_time, ocsf};

/// Output format of an export or a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// writ's audit record, one JSON object a line.
    #[default]
    Jsonl,
    /// OCSF 1.3 events, one JSON object a line.
    Ocsf,
}

impl Format {
    /// Parse `jsonl` or `ocsf`.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "jsonl" => Some(Format::Jsonl),
            "ocsf" => Some(Format::Ocsf),
            _ => None,
        }
    }

    /// One line for `record`, without the newline.
    pub fn line(self, record: &AuditRecord) -> String {
        match self {
            Format::Jsonl => serde_json::to_string(record)
                .expect("an audit record of plain strings always serialises"),
            Format::Ocsf => ocsf::event(record).to_string(),
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        Format::parse(s).ok_or_else(|| format!("unknown format {s:?}; use jsonl or ocsf"))
    }
}

/// A position in the log: a sequence number or a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// `seq` (a decimal integer).
    Seq(i64),
    /// A time, normalised to the stored form (RFC 3339 UTC with milliseconds), so it
    /// compares with stored times as text.
    Time(String),
}

impl Position {
    /// Parse a decimal sequence number or an RFC 3339 time.
    pub fn parse(text: &str) -> Result<Position, String> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Position::Seq)
                .map_err(|_| format!("{text:?} is too large for a sequence number"));
        }
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Position::Time(format_time(t)))
            .map_err(|_| {
                format!(
                    "{text:?} is neither a sequence number nor an RFC 3339 time \
                     (e.g. 2026-01-31T00:00:00Z)"
                )
            })
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Position, String> {
        Position::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, GENESIS_HASH, Outcome, chain_hash, event};

    #[test]
    fn positions() {
        assert_eq!(Position::parse("42"), Ok(Position::Seq(42)));
        assert_eq!(
            Position::parse("2026-01-31T01:02:03+01:00"),
            Ok(Position::Time("2026-01-31T00:02:03.000Z".into()))
        );
        assert!(Position::parse("yesterday").is_err());
        assert!(Position::parse("-1").is_err());
        assert!(Position::parse("99999999999999999999999").is_err());
    }

    #[test]
    fn jsonl_lines_carry_everything_needed_to_rehash() {
        let entry = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
        let time = "2026-01-01T00:00:00.000Z".to_owned();
        let hash = chain_hash(1, &time, &entry, GENESIS_HASH);
        let record = AuditRecord {
            seq: 1,
            time,
            entry,
            prev_hash: GENESIS_HASH.into(),
            hash,
        };
        let line = Format::Jsonl.line(&record);
        assert!(!line.contains('\n'));
        let back: AuditRecord = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, record);
        assert_eq!(
            chain_hash(back.seq, &back.time, &back.entry, &back.prev_hash),
            back.hash
        );
    }
}

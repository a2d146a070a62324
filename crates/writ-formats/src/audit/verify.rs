//! Walking the audit chain: every record's hash must match its contents, every record must
//! follow the one before it (`prev_hash`, and `seq` without gaps), every trusted signed
//! checkpoint must match the record it names, and the log must not end before the newest
//! checkpoint (or before what a sink already delivered). The walk is fed records in `seq`
//! order, in batches, so a log of any size is checked in constant memory.
//!
//! Where the walk starts: at genesis (seq 1, `prev_hash` = [`GENESIS_HASH`]), or — for a
//! pruned log, or when asked to start from the newest checkpoint — at a record a trusted
//! checkpoint vouches for. A log that starts anywhere else lost its beginning.
//!
//! Pure: the caller reads records, checkpoints and sink positions and verifies checkpoint
//! signatures ([`super::checkpoint`]) before handing them in.

use std::collections::BTreeMap;
use std::fmt;

use super::{AuditRecord, GENESIS_HASH, chain_hash, event};

/// The first thing wrong with a log. [`Problem::first_bad_seq`] names the first record that
/// is bad or missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The record's hash does not match its contents: edited, or moved from another seq.
    Edited {
        /// The record.
        seq: i64,
    },
    /// The record does not follow the previous one (`prev_hash` differs).
    BrokenLink {
        /// The record.
        seq: i64,
    },
    /// Records are missing between two records.
    Missing {
        /// First missing seq.
        from: i64,
        /// Last missing seq.
        to: i64,
    },
    /// A record's seq does not increase.
    OutOfOrder {
        /// The record.
        seq: i64,
    },
    /// The log does not start at genesis and no trusted checkpoint vouches for its first
    /// record: its beginning was deleted.
    UnanchoredStart {
        /// The first record present.
        first: i64,
    },
    /// The log starts at a checkpoint but no `audit.pruned` record says it was pruned there.
    UnrecordedPrune {
        /// The first record present.
        first: i64,
    },
    /// A trusted checkpoint names a different hash for this record: the log was rewritten
    /// (with recomputed hashes) somewhere after the last checkpoint that matched.
    CheckpointMismatch {
        /// The checkpointed record.
        seq: i64,
        /// First record that may have been rewritten.
        since: i64,
    },
    /// Two validly signed checkpoints disagree about one record: the log forked.
    CheckpointConflict {
        /// The record.
        seq: i64,
    },
    /// The log ends before a record a checkpoint or a sink has seen: its tail was cut off.
    Truncated {
        /// Last record present (0 when the log is empty).
        head: i64,
        /// Highest seq known to have existed.
        known: i64,
        /// What knew it: `signed checkpoint`, or `sink NAME`.
        witness: String,
    },
}

impl Problem {
    /// The first record that is bad or missing.
    pub fn first_bad_seq(&self) -> i64 {
        match self {
            Problem::Edited { seq }
            | Problem::BrokenLink { seq }
            | Problem::OutOfOrder { seq }
            | Problem::CheckpointConflict { seq } => *seq,
            Problem::Missing { from, .. } => *from,
            Problem::UnanchoredStart { .. } | Problem::UnrecordedPrune { .. } => 1,
            Problem::CheckpointMismatch { since, .. } => *since,
            Problem::Truncated { head, .. } => head + 1,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Edited { seq } => write!(
                f,
                "record seq {seq} does not match its hash: it was edited, or moved from another position"
            ),
            Problem::BrokenLink { seq } => write!(
                f,
                "record seq {seq} does not follow the record before it (prev_hash differs): \
                 records were removed, inserted or reordered"
            ),
            Problem::Missing { from, to } if from == to => {
                write!(f, "record seq {from} is missing: it was deleted")
            }
            Problem::Missing { from, to } => write!(
                f,
                "records seq {from} to {to} are missing: they were deleted"
            ),
            Problem::OutOfOrder { seq } => {
                write!(
                    f,
                    "record seq {seq} is out of order (duplicate or decreasing seq)"
                )
            }
            Problem::UnanchoredStart { first } => write!(
                f,
                "the log starts at seq {first} and no trusted signed checkpoint vouches for that \
                 record: records seq 1 to {} were deleted",
                first - 1
            ),
            Problem::UnrecordedPrune { first } => write!(
                f,
                "the log starts at seq {first} (a checkpoint) but no audit.pruned record says it was \
                 pruned there: records seq 1 to {} were deleted outside `writ admin audit prune`",
                first - 1
            ),
            Problem::CheckpointMismatch { seq, since } => write!(
                f,
                "record seq {seq} differs from the signed checkpoint for it: the log was rewritten \
                 somewhere in seq {since} to {seq}"
            ),
            Problem::CheckpointConflict { seq } => write!(
                f,
                "two validly signed checkpoints name different hashes for record seq {seq}: the log forked"
            ),
            Problem::Truncated {
                head,
                known,
                witness,
            } => write!(
                f,
                "the log ends at seq {head} but a {witness} covers seq {known}: records seq {} to \
                 {known} were cut off the end",
                head + 1
            ),
        }
    }
}

/// What a clean walk covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// First record walked (0 when the log is empty).
    pub first: i64,
    /// Last record walked (0 when the log is empty).
    pub last: i64,
    /// Hash of the last record.
    pub head_hash: Option<String>,
    /// Records walked.
    pub records: u64,
    /// Checkpoints matched against a record.
    pub checkpoints_matched: u64,
    /// Newest checkpoint matched.
    pub newest_checkpoint: Option<i64>,
}

/// The chain walk. Feed records with [`Walker::push`] in `seq` order, then call
/// [`Walker::finish`].
#[derive(Debug)]
pub struct Walker {
    anchors: BTreeMap<i64, String>,
    witnesses: Vec<(i64, String)>,
    full: bool,
    prev: Option<(i64, String)>,
    last_matched: Option<i64>,
    pruned_to: Option<i64>,
    summary: Summary,
}

impl Walker {
    /// A walk trusting `checkpoints` (seq → hash; signatures already verified).
    /// `full` is true when the walk starts at the oldest record present (not at a
    /// checkpoint picked to skip history): only then is an unexplained start an error.
    pub fn new(
        checkpoints: impl IntoIterator<Item = (i64, String)>,
        full: bool,
    ) -> Result<Walker, Problem> {
        let mut anchors = BTreeMap::new();
        for (seq, hash) in checkpoints {
            match anchors.get(&seq) {
                Some(existing) if *existing != hash => {
                    return Err(Problem::CheckpointConflict { seq });
                }
                _ => {
                    anchors.insert(seq, hash);
                }
            }
        }
        Ok(Walker {
            anchors,
            witnesses: Vec::new(),
            full,
            prev: None,
            last_matched: None,
            pruned_to: None,
            summary: Summary::default(),
        })
    }

    /// Something outside the log (a sink, by name) has seen records up to `seq`.
    pub fn witness(&mut self, seq: i64, who: String) {
        self.witnesses.push((seq, who));
    }

    /// The next record.
    pub fn push(&mut self, record: &AuditRecord) -> Result<(), Problem> {
        let seq = record.seq;
        match &self.prev {
            None => {
                if chain_hash(seq, &record.time, &record.entry, &record.prev_hash) != record.hash {
                    return Err(Problem::Edited { seq });
                }
                if seq == 1 {
                    if record.prev_hash != GENESIS_HASH {
                        return Err(Problem::BrokenLink { seq });
                    }
                } else if self.anchors.get(&seq) != Some(&record.hash) {
                    return Err(Problem::UnanchoredStart { first: seq });
                }
                self.summary.first = seq;
            }
            Some((prev_seq, prev_hash)) => {
                if seq <= *prev_seq {
                    return Err(Problem::OutOfOrder { seq });
                }
                if seq != prev_seq + 1 {
                    return Err(Problem::Missing {
                        from: prev_seq + 1,
                        to: seq - 1,
                    });
                }
                if chain_hash(seq, &record.time, &record.entry, prev_hash) != record.hash {
                    return Err(if record.prev_hash != *prev_hash {
                        Problem::BrokenLink { seq }
                    } else {
                        Problem::Edited { seq }
                    });
                }
            }
        }
        if let Some(expected) = self.anchors.get(&seq) {
            if *expected != record.hash {
                let since = self.last_matched.map_or(self.summary.first, |s| s + 1);
                return Err(Problem::CheckpointMismatch { seq, since });
            }
            self.last_matched = Some(seq);
            self.summary.checkpoints_matched += 1;
            self.summary.newest_checkpoint = Some(seq);
        }
        if record.entry.event == event::AUDIT_PRUNED
            && let Some(start) = record
                .entry
                .reason
                .as_deref()
                .and_then(pruned_start_from_reason)
        {
            self.pruned_to = Some(start);
        }
        self.prev = Some((seq, record.hash.clone()));
        self.summary.last = seq;
        self.summary.records += 1;
        Ok(())
    }

    /// End of the log.
    pub fn finish(mut self) -> Result<Summary, Problem> {
        let head = self.summary.last;
        if let Some((&known, _)) = self.anchors.iter().next_back()
            && known > head
        {
            return Err(Problem::Truncated {
                head,
                known,
                witness: "signed checkpoint".into(),
            });
        }
        if let Some((known, who)) = self.witnesses.iter().max_by_key(|(seq, _)| *seq)
            && *known > head
        {
            return Err(Problem::Truncated {
                head,
                known: *known,
                witness: who.clone(),
            });
        }
        let first = self.summary.first;
        if self.full && first > 1 && self.pruned_to != Some(first) {
            return Err(Problem::UnrecordedPrune { first });
        }
        self.summary.head_hash = self.prev.take().map(|(_, hash)| hash);
        Ok(self.summary)
    }
}

/// The `reason` of an `audit.pruned` record: `start_seq=N deleted=M before=T`.
pub fn pruned_reason(start_seq: i64, deleted: u64, before: &str) -> String {
    format!("start_seq={start_seq} deleted={deleted} before={before}")
}

fn pruned_start_from_reason(reason: &str) -> Option<i64> {
    reason
        .split_whitespace()
        .find_map(|field| field.strip_prefix("start_seq="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEntry, Outcome, chained};

    fn log(n: i64) -> Vec<AuditRecord> {
        chained(n, |seq| {
            let mut entry = AuditEntry::new(event::CERT_ISSUED, Outcome::Success);
            entry.serial = Some(seq.to_string());
            (format!("2026-01-01T00:00:{seq:02}.000Z"), entry)
        })
    }

    fn walk(
        records: &[AuditRecord],
        anchors: &[(i64, String)],
        full: bool,
    ) -> Result<Summary, Problem> {
        let mut walker = Walker::new(anchors.iter().cloned(), full)?;
        for r in records {
            walker.push(r)?;
        }
        walker.finish()
    }

    #[test]
    fn clean_logs_pass() {
        let records = log(5);
        let summary = walk(&records, &[(3, records[2].hash.clone())], true).expect("clean");
        assert_eq!((summary.first, summary.last, summary.records), (1, 5, 5));
        assert_eq!(summary.newest_checkpoint, Some(3));
        assert_eq!(walk(&[], &[], true).expect("empty").records, 0);
    }

    #[test]
    fn edits_deletions_reordering_and_truncation_name_the_first_bad_seq() {
        let records = log(6);
        let mut edited = records.clone();
        edited[2].entry.subject = Some("mallory".into());
        assert_eq!(walk(&edited, &[], true), Err(Problem::Edited { seq: 3 }));

        let mut deleted = records.clone();
        deleted.remove(2);
        let problem = walk(&deleted, &[], true).expect_err("gap");
        assert_eq!(problem, Problem::Missing { from: 3, to: 3 });
        assert_eq!(problem.first_bad_seq(), 3);

        // Rows 3 and 4 swap places (their seq values swapped, contents and hashes kept).
        let mut swapped = records.clone();
        swapped.swap(2, 3);
        swapped[2].seq = 3;
        swapped[3].seq = 4;
        assert_eq!(
            walk(&swapped, &[], true),
            Err(Problem::BrokenLink { seq: 3 })
        );

        // The tail is cut off after a checkpoint at 6.
        let anchors = [(6, records[5].hash.clone())];
        let problem = walk(&records[..4], &anchors, true).expect_err("truncated");
        assert_eq!(problem.first_bad_seq(), 5);
        assert!(problem.to_string().contains("seq 5 to 6"), "{problem}");

        // A sink already delivered seq 6.
        let mut walker = Walker::new([], true).expect("walker");
        walker.witness(6, "sink siem".into());
        for r in &records[..5] {
            walker.push(r).expect("push");
        }
        assert_eq!(walker.finish().expect_err("cut").first_bad_seq(), 6);
    }

    #[test]
    fn rewritten_history_is_caught_by_a_checkpoint() {
        let records = log(6);
        let anchors = [(2, records[1].hash.clone()), (5, records[4].hash.clone())];
        // Re-chain everything from seq 4 on after editing it, as an attacker who knows the
        // hash function would.
        let mut forged = records.clone();
        forged[3].entry.subject = Some("mallory".into());
        for i in 3..forged.len() {
            let prev = forged[i - 1].hash.clone();
            let r = &mut forged[i];
            r.prev_hash = prev.clone();
            r.hash = chain_hash(r.seq, &r.time, &r.entry, &prev);
        }
        assert_eq!(
            walk(&forged, &anchors, true),
            Err(Problem::CheckpointMismatch { seq: 5, since: 3 })
        );
        assert!(matches!(
            Walker::new([(1, "a".to_owned()), (1, "b".to_owned())], true),
            Err(Problem::CheckpointConflict { seq: 1 })
        ));
    }

    #[test]
    fn a_log_may_start_only_at_a_recorded_prune_checkpoint() {
        let mut records = log(6);
        // An audit.pruned record at the end says the log now starts at 3.
        let mut pruned = AuditEntry::new(event::AUDIT_PRUNED, Outcome::Success);
        pruned.reason = Some(pruned_reason(3, 2, "2026-01-01T00:00:03.000Z"));
        let prev = records[5].hash.clone();
        let time = "2026-01-01T00:00:07.000Z".to_owned();
        let hash = chain_hash(7, &time, &pruned, &prev);
        records.push(AuditRecord {
            seq: 7,
            time,
            entry: pruned,
            prev_hash: prev,
            hash,
        });
        let anchor = [(3, records[2].hash.clone())];
        assert_eq!(walk(&records[2..], &anchor, true).expect("pruned").first, 3);
        assert_eq!(
            walk(&records[2..], &[], true),
            Err(Problem::UnanchoredStart { first: 3 })
        );
        // Starting at a checkpoint with no prune record: fine when the caller chose to
        // start there, not when that is where the log begins.
        assert!(walk(&records[2..6], &anchor, false).is_ok());
        assert_eq!(
            walk(&records[2..6], &anchor, true),
            Err(Problem::UnrecordedPrune { first: 3 })
        );
    }
}

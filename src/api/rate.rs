//! Rate limits per client address and per workload identity, and what keeps a flood of
//! refusals from filling the disk.
//!
//! Each limit is a generic cell rate algorithm (GCRA) per key: `n` per minute, with bursts
//! of up to `n`. A client address that has spent its budget of failed authentications is
//! *flooding*: until the budget recovers its requests are answered 429 before any token is
//! checked, and every refusal from it is counted into one summary per
//! `flood_summary_interval` (count, first and last time, reasons seen) instead of one
//! durable record each. [`RateLimits::take_summaries`] hands the summaries to the caller
//! that writes them (`server`'s flusher, and shutdown).
//!
//! Written here rather than taken from a crate because a flood check must *look* at an
//! address's budget without spending it, which the keyed limiters available do not offer.
//! Never blocks (one short mutex per check), never stores a token or a key; memory is
//! bounded by dropping keys whose budget is full again.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::audit::{AuditEntry, Outcome, event};
use crate::config::LimitsConfig;

/// Keys tracked per limiter before idle ones are swept.
const SWEEP_AT: usize = 10_000;

/// `n` per minute per key.
struct Gcra<K> {
    /// Time between two events at the steady rate.
    interval: Duration,
    /// How far ahead of now a key's schedule may run (the burst).
    tolerance: Duration,
    /// Per key: when its schedule is next free (theoretical arrival time).
    next_free: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Gcra<K> {
    fn per_minute(n: u32) -> Gcra<K> {
        let n = n.max(1);
        let interval = Duration::from_secs(60) / n;
        Gcra {
            interval,
            tolerance: interval * (n - 1),
            next_free: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<K, Instant>> {
        self.next_free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spend one event for `key` at `now`: `Err(wait)` if over the limit (nothing spent).
    fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut table = self.table();
        if table.len() >= SWEEP_AT {
            table.retain(|_, free| *free > now);
        }
        let free = table.get(key).copied().unwrap_or(now).max(now);
        let ahead = free - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        table.insert(key.clone(), free + self.interval);
        Ok(())
    }

    /// Whether `key` could spend one event at `now`; if not, how long until it can.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let table = self.table();
        let ahead = table.get(key)?.saturating_duration_since(now);
        (ahead > self.tolerance).then(|| ahead - self.tolerance)
    }
}

/// Refusals from one flooding address within the current interval.
#[derive(Debug, Clone)]
struct Summary {
    count: u64,
    first: OffsetDateTime,
    last: OffsetDateTime,
    reasons: BTreeMap<&'static str, u64>,
}

/// A request refused for going over a limit: when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until the limit lets the request through (at least 1).
    pub retry_after_secs: u64,
}

impl Limited {
    /// The 429 answer: `what` went over its limit.
    pub fn answer(self, what: &str) -> super::ApiError {
        super::ApiError::rate_limited(what, self.retry_after_secs)
    }

    fn after(wait: Duration) -> Limited {
        let rounded_up = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Limited {
            retry_after_secs: rounded_up.max(1),
        }
    }
}

/// The CA's rate limits and flood summaries.
pub struct RateLimits {
    issuance_by_address: Gcra<IpAddr>,
    issuance_by_identity: Gcra<(String, String)>,
    failed_auth_by_address: Gcra<IpAddr>,
    floods: Mutex<HashMap<IpAddr, Summary>>,
    summary_interval: Duration,
}

impl RateLimits {
    /// The limits `[limits]` sets.
    pub fn new(config: &LimitsConfig) -> RateLimits {
        RateLimits {
            issuance_by_address: Gcra::per_minute(config.issuances_per_minute_per_ip),
            issuance_by_identity: Gcra::per_minute(config.issuances_per_minute_per_identity),
            failed_auth_by_address: Gcra::per_minute(config.failed_auth_per_minute_per_ip),
            floods: Mutex::new(HashMap::new()),
            summary_interval: config.flood_summary_interval,
        }
    }

    /// How often the summaries are written (`[limits] flood_summary_interval`).
    pub fn summary_interval(&self) -> Duration {
        self.summary_interval
    }

    /// One more issuance from `address`.
    pub fn issuance_from(&self, address: IpAddr) -> Result<(), Limited> {
        self.issuance_by_address
            .take(&address, Instant::now())
            .map_err(Limited::after)
    }

    /// One more issuance for the identity `issuer`/`subject`.
    pub fn issuance_for(&self, issuer: &str, subject: &str) -> Result<(), Limited> {
        self.issuance_by_identity
            .take(&(issuer.to_owned(), subject.to_owned()), Instant::now())
            .map_err(Limited::after)
    }

    /// An authentication from `address` failed: it spends the address's budget (an
    /// address already over it spends nothing more).
    pub fn failed_auth_from(&self, address: IpAddr) {
        let _ = self.failed_auth_by_address.take(&address, Instant::now());
    }

    /// Whether `address` is flooding: its budget of failed authentications is spent, so
    /// one more would go over it.
    pub fn flooding(&self, address: IpAddr) -> Option<Limited> {
        self.failed_auth_by_address
            .wait(&address, Instant::now())
            .map(Limited::after)
    }

    /// Count a refusal of a flooding `address` (reason code `code`) into its summary
    /// instead of recording it on its own.
    pub fn summarise(&self, address: IpAddr, code: &'static str, at: OffsetDateTime) {
        let mut floods = self
            .floods
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let summary = floods.entry(address).or_insert_with(|| Summary {
            count: 0,
            first: at,
            last: at,
            reasons: BTreeMap::new(),
        });
        summary.count = summary.count.saturating_add(1);
        summary.last = summary.last.max(at);
        *summary.reasons.entry(code).or_insert(0) += 1;
    }

    /// The summaries gathered since the last call, as `token.rejected` records (one per
    /// address, oldest first), emptied.
    pub fn take_summaries(&self) -> Vec<AuditEntry> {
        let floods = std::mem::take(
            &mut *self
                .floods
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut summaries: Vec<(IpAddr, Summary)> = floods.into_iter().collect();
        summaries.sort_by_key(|(address, summary)| (summary.first, *address));
        summaries
            .into_iter()
            .map(|(address, summary)| summary_record(address, &summary))
            .collect()
    }
}

fn summary_record(address: IpAddr, summary: &Summary) -> AuditEntry {
    let mut record = AuditEntry::new(event::TOKEN_REJECTED, Outcome::Failure);
    record.source_ip = Some(address.to_string());
    let reasons: Vec<String> = summary
        .reasons
        .iter()
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect();
    record.reason = Some(format!(
        "flood_summary: {} refusals from {address} between {} and {} over the failed \
         authentication limit, not recorded one by one (reasons: {})",
        summary.count,
        crate::audit::format_time(summary.first),
        crate::audit::format_time(summary.last),
        reasons.join(", ")
    ));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_burst_then_refuses_until_it_recovers() {
        let limit: Gcra<u8> = Gcra::per_minute(60);
        let start = Instant::now();
        for n in 0..60 {
            assert_eq!(limit.take(&1, start), Ok(()), "event {n}");
        }
        let wait = limit.take(&1, start).expect_err("over");
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(limit.wait(&1, start), Some(Duration::from_secs(1)));
        // Another key has its own budget.
        assert_eq!(limit.take(&2, start), Ok(()));
        // One interval later one more event fits, and no more.
        let later = start + Duration::from_secs(1);
        assert_eq!(limit.wait(&1, later), None);
        assert_eq!(limit.take(&1, later), Ok(()));
        assert!(limit.take(&1, later).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        assert_eq!(Limited::after(Duration::from_millis(1)).retry_after_secs, 1);
        assert_eq!(Limited::after(Duration::from_secs(1)).retry_after_secs, 1);
        assert_eq!(
            Limited::after(Duration::from_millis(1500)).retry_after_secs,
            2
        );
    }

    #[test]
    fn refusals_of_a_flood_become_one_summary_per_address() {
        let config = LimitsConfig {
            failed_auth_per_minute_per_ip: 2,
            ..LimitsConfig::default()
        };
        let limits = RateLimits::new(&config);
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        assert_eq!(limits.flooding(a), None);
        limits.failed_auth_from(a);
        assert_eq!(limits.flooding(a), None, "one of two spent");
        limits.failed_auth_from(a);
        assert!(limits.flooding(a).is_some(), "the budget is spent");
        assert_eq!(limits.flooding(b), None);
        let t = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        for n in 0..1000 {
            limits.summarise(
                a,
                if n % 2 == 0 {
                    "bad_signature"
                } else {
                    "rate_limited"
                },
                t(100 + n),
            );
        }
        let records = limits.take_summaries();
        assert_eq!(records.len(), 1);
        let reason = records[0].reason.as_deref().expect("reason");
        assert!(
            reason.starts_with("flood_summary: 1000 refusals from 192.0.2.1"),
            "{reason}"
        );
        assert!(
            reason.contains("bad_signature ×500, rate_limited ×500"),
            "{reason}"
        );
        assert!(
            reason.contains("1970-01-01T00:01:40.000Z and 1970-01-01T00:18:19.000Z"),
            "{reason}"
        );
        assert_eq!(records[0].source_ip.as_deref(), Some("192.0.2.1"));
        assert!(limits.take_summaries().is_empty(), "taken once");
    }
}

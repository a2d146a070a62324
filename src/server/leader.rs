//! Which process does the work that must run once however many replicas share the store:
//! scheduled rotation, key retirement and publishing the `next` key, the audit sinks and
//! the signed checkpoints. The process that holds the store's lease [`LEASE`] does it;
//! every replica keeps asking, every [`RENEW_EVERY`], for [`LEASE_FOR`] more. When the
//! holder dies its lease runs out and another replica takes it at its next ask (within
//! `LEASE_FOR + RENEW_EVERY`); a clean shutdown gives it up at once.
//!
//! The database decides who holds it (`Store::hold_lease`), so two replicas never both
//! believe they hold it for longer than one ask: one that cannot reach the store, or is
//! refused, stops at once. Serving requests, reloading the keyring and everything per
//! process (flood summaries) never depend on it. It must never be the only guard of a
//! write: every once-only write is also guarded in the store (a second rotation is a
//! `Conflict`, a sink resumes from its stored position), so work done twice while a
//! lease changes hands is harmless.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rand_core::{OsRng, RngCore};
use time::OffsetDateTime;

use crate::store::Store;

/// The lease's name in the store.
pub const LEASE: &str = "background-work";
/// How often every replica asks for the lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long one ask holds it.
pub const LEASE_FOR: Duration = Duration::from_secs(10);

/// This process's standing: its holder name and whether it holds the lease now.
#[derive(Debug)]
pub struct Leadership {
    holder: String,
    leading: AtomicBool,
    /// Set by [`Leadership::release`]: this process asks no more.
    given_up: AtomicBool,
}

impl Leadership {
    /// A new process's standing (not leading until its first ask is granted). The holder
    /// name says which host and process holds the lease (`host:pid:random`).
    pub fn new() -> Arc<Leadership> {
        let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .take(64)
            .collect();
        let mut random = [0u8; 4];
        OsRng.fill_bytes(&mut random);
        Arc::new(Leadership {
            holder: format!(
                "{}:{}:{}",
                host,
                std::process::id(),
                crate::audit::hex(&random)
            ),
            leading: AtomicBool::new(false),
            given_up: AtomicBool::new(false),
        })
    }

    /// Whether this process does the once-only work now.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// The name this process holds the lease under.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Ask once, at `now_unix`; logs when this process starts or stops leading. Returns
    /// whether it leads now.
    pub async fn ask(&self, store: &dyn Store, now_unix: i64) -> bool {
        if self.given_up.load(Ordering::Relaxed) {
            return false;
        }
        let until = now_unix.saturating_add(LEASE_FOR.as_secs() as i64);
        let granted = match store.hold_lease(LEASE, &self.holder, now_unix, until).await {
            Ok(granted) => granted,
            Err(error) => {
                if self.is_leading() {
                    tracing::warn!(%error, "cannot renew the background-work lease; another replica may take it over");
                }
                false
            }
        };
        let was = self.leading.swap(granted, Ordering::Relaxed);
        match (was, granted) {
            (false, true) => tracing::info!(
                holder = %self.holder,
                "this process now runs the once-only background work (rotation schedule, key retirement, audit sinks, checkpoints)"
            ),
            (true, false) => tracing::warn!(
                holder = %self.holder,
                "this process no longer runs the once-only background work"
            ),
            _ => {}
        }
        granted
    }

    /// Give the lease up for good (clean shutdown), so another replica takes it at its
    /// next ask; this process asks no more.
    pub async fn release(&self, store: &dyn Store) {
        self.given_up.store(true, Ordering::Relaxed);
        self.leading.store(false, Ordering::Relaxed);
        if let Err(error) = store.release_lease(LEASE, &self.holder).await {
            tracing::warn!(%error, "cannot give up the background-work lease; it expires by itself");
        }
    }
}

/// Ask for the lease every [`RENEW_EVERY`] while the store lives (spawned on the server's
/// runtime; holds the store weakly, like the audit tasks).
pub async fn keep_asking(leadership: Arc<Leadership>, store: Weak<dyn Store>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        leadership.ask(store.as_ref(), now).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes on one store: one leads, the other does not, until the first gives
    /// the lease up.
    #[tokio::test]
    async fn one_of_two_leads_until_it_gives_the_lease_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(
                dir.path().join("writ.db").to_str().expect("path"),
            )
            .await
            .expect("open"),
        );
        let (a, b) = (Leadership::new(), Leadership::new());
        assert_ne!(a.holder(), b.holder());
        assert!(a.ask(store.as_ref(), 100).await);
        assert!(!b.ask(store.as_ref(), 101).await);
        assert!(a.is_leading() && !b.is_leading());
        a.release(store.as_ref()).await;
        assert!(!a.is_leading());
        assert!(b.ask(store.as_ref(), 102).await);
        // Given up for good: it does not take the lease again, even once it is free.
        b.release(store.as_ref()).await;
        assert!(!a.ask(store.as_ref(), 103).await);
    }
}

//! Push for `GET /v1/revocations?after=SEQUENCE&wait=SECONDS`: knows the feed sequence at
//! which the revocation lists last changed, and lets a request wait (a future on a
//! `tokio::sync::watch` channel: no thread, no store read per waiter) until they change
//! after the sequence the host already has, or its wait ends.
//!
//! The lists can change on any replica or through `writ admin`, so one background task
//! per replica reads them from the store every [`POLL`] while anyone waits (never when no
//! host uses push); a revocation on this replica wakes it at once ([`RevocationWatch::poke`]).
//! It must never answer a waiter early with nothing new except at shutdown
//! ([`RevocationWatch::release`]), nor hold one past its bound.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::duration;
use crate::store::{Revocations, Store};

/// How often the lists are read while hosts wait: the push latency to hosts of other
/// replicas (and after `writ admin` revocations).
pub const POLL: Duration = Duration::from_millis(250);

/// The longest wait granted, whatever the host asks (the request must also finish within
/// `[server] request_timeout`, see [`RevocationWatch::new`]).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// What a waiter watches: the sequence of the snapshot in which the lists last changed
/// (`None` until first read), and whether the server is shutting down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Changed {
    sequence: Option<i64>,
    released: bool,
}

/// See the module documentation.
pub struct RevocationWatch {
    changed: watch::Sender<Changed>,
    wake: Notify,
    max_wait: Duration,
}

impl RevocationWatch {
    /// A watch over `store`'s revocations (entries kept `retention` after their end, as in
    /// the feed), granting waits of at most [`MAX_WAIT`] and 5 s less than
    /// `request_timeout`; its background task stops when the store is gone.
    pub fn new(
        store: &Arc<dyn Store>,
        retention: Duration,
        request_timeout: Duration,
    ) -> Arc<RevocationWatch> {
        let watch = Arc::new(RevocationWatch {
            changed: watch::Sender::new(Changed::default()),
            wake: Notify::new(),
            max_wait: MAX_WAIT.min(request_timeout.saturating_sub(Duration::from_secs(5))),
        });
        tokio::spawn(follow(Arc::clone(&watch), Arc::downgrade(store), retention));
        watch
    }

    /// The longest wait granted.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Wait until the lists have changed in a snapshot newer than `after`, at most `wait`
    /// (capped at [`Self::max_wait`]); whether they did (`false`: the wait ended).
    pub async fn changed_after(&self, after: i64, wait: Duration) -> bool {
        let mut changes = self.changed.subscribe();
        self.wake.notify_one();
        let newer = |c: &Changed| c.released || c.sequence.is_some_and(|s| s > after);
        tokio::time::timeout(wait.min(self.max_wait), changes.wait_for(newer))
            .await
            .is_ok_and(|answered| answered.is_ok())
    }

    /// A revocation was just committed on this replica: read the lists now.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Shutdown: answer every waiter now (with the feed as it is).
    pub fn release(&self) {
        self.changed.send_modify(|c| c.released = true);
    }
}

/// The background task: while anyone waits, read the lists every [`POLL`] (or when
/// poked) and publish the snapshot's sequence when they differ from the last read.
async fn follow(this: Arc<RevocationWatch>, store: Weak<dyn Store>, retention: Duration) {
    // The lists last read (their sequence zeroed: only the lists are compared).
    let mut last: Option<Revocations> = None;
    loop {
        if this.changed.receiver_count() == 0 {
            this.wake.notified().await;
            continue;
        }
        let Some(store) = store.upgrade() else { return };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match store
            .revocations(now.saturating_sub(duration::secs(retention)))
            .await
        {
            Ok(read) => {
                let sequence = read.sequence;
                let lists = Revocations {
                    sequence: 0,
                    ..read
                };
                if last.as_ref() != Some(&lists) {
                    last = Some(lists);
                    this.changed.send_modify(|c| c.sequence = Some(sequence));
                }
            }
            Err(e) => tracing::warn!(error = %e, "revocation watch: cannot read revocations"),
        }
        drop(store);
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = this.wake.notified() => {}
        }
    }
}

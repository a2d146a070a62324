//! Issuances on their way to a store that groups commits: requests that announced one
//! ([`crate::store::Store::announce_issuance`]) and are being checked and signed. A
//! backend's writer (`sqlite::writer`, `postgres::writer`) waits briefly for them when it
//! is about to commit, so under concurrent load they share one commit, and one fsync,
//! instead of each paying for its own; when none is on its way it commits at once, so a
//! lone request never waits. Only counts: it never holds an issuance nor blocks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The count of issuances on their way; clones share it.
#[derive(Clone, Default)]
pub struct Arrivals(Arc<AtomicUsize>);

impl Arrivals {
    /// A request that may issue a certificate has started; it counts until
    /// [`Arrival::arrived`] or until it is dropped.
    pub fn expect(&self) -> Arrival {
        self.0.fetch_add(1, Ordering::Relaxed);
        Arrival {
            count: self.0.clone(),
            arrived: AtomicBool::new(false),
        }
    }

    /// How many are on their way now.
    pub fn on_the_way(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One expected issuance.
pub struct Arrival {
    count: Arc<AtomicUsize>,
    arrived: AtomicBool,
}

impl Arrival {
    /// The request is handing its issuance to the store (or gave up): stop counting it.
    /// Only the first call counts.
    pub fn arrived(&self) {
        if !self.arrived.swap(true, Ordering::Relaxed) {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.arrived();
    }
}

impl fmt::Debug for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arrival")
            .field("arrived", &self.arrived.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Arrivals;

    #[test]
    fn counts_until_arrived_or_dropped_once_each() {
        let arrivals = Arrivals::default();
        let first = arrivals.expect();
        let second = arrivals.clone().expect();
        assert_eq!(arrivals.on_the_way(), 2);
        first.arrived();
        first.arrived();
        assert_eq!(arrivals.on_the_way(), 1);
        drop(first);
        assert_eq!(arrivals.on_the_way(), 1);
        drop(second);
        assert_eq!(arrivals.on_the_way(), 0);
    }
}

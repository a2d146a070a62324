//! Certificate serial numbers: random, non-zero, 63-bit (they fit SQLite's signed 64-bit
//! integer) and time-ordered, so the certificates table's unique serial index grows at
//! its right edge. A serial random in all 63 bits put every issuance on a random page of
//! that index, and each such page was written to the WAL and again at checkpoint.
//!
//! Layout, most significant first: a zero bit, 42 bits of Unix time in milliseconds
//! (until the year 2109), 21 random bits. Uniqueness is the store's: its unique serial
//! index refuses a repeat and the issuer signs again with the next serial. Two serials
//! collide only within one millisecond, about once a minute at 10,000 certificates a
//! second. The time in a serial says no more than the certificate's `valid_after`;
//! what random X.509 serials protect against (a chosen-prefix collision on the signed
//! bytes) an SSH certificate gets from its 32-byte random nonce, which comes first.

use rand_core::RngCore;
use time::OffsetDateTime;

const RANDOM_BITS: u32 = 21;
const RANDOM_MASK: u64 = (1 << RANDOM_BITS) - 1;
const MILLIS_MASK: u64 = (1 << 42) - 1;

/// A fresh serial for a certificate issued at `now`, its random bits from `rng`.
pub fn new_serial(now: OffsetDateTime, rng: &mut impl RngCore) -> u64 {
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    compose(millis, rng.next_u64())
}

/// The serial for `millis` and random bits `random`; never zero.
fn compose(millis: u64, random: u64) -> u64 {
    let serial = ((millis & MILLIS_MASK) << RANDOM_BITS) | (random & RANDOM_MASK);
    serial.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use std::collections::HashSet;

    fn new_serial_now() -> u64 {
        new_serial(OffsetDateTime::now_utc(), &mut OsRng)
    }

    #[test]
    fn serials_are_non_zero_63_bit_and_random_within_a_millisecond() {
        let serials: Vec<u64> = (0..10_000).map(|_| new_serial_now()).collect();
        assert!(serials.iter().all(|&s| s > 0 && s <= i64::MAX as u64));
        // 10,000 draws of 21 random bits: about 24 pairs repeat if all were in one
        // millisecond; far fewer spread over several. Equal low bits everywhere would
        // mean no randomness at all.
        let low: HashSet<u64> = serials.iter().map(|s| s & RANDOM_MASK).collect();
        assert!(low.len() > 9_900, "{} distinct random parts", low.len());
    }

    #[test]
    fn serials_follow_the_clock() {
        let now = time::macros::datetime!(2026-12-02 06:00:00.123 UTC);
        let millis = 1_796_191_200_123_u64;
        assert_eq!(now.unix_timestamp_nanos() / 1_000_000, i128::from(millis));
        let serial = new_serial(now, &mut OsRng);
        assert_eq!(serial >> RANDOM_BITS, millis);
        // A later millisecond sorts after every serial of an earlier one.
        assert!(compose(millis + 1, 0) > compose(millis, RANDOM_MASK));
    }

    #[test]
    fn fields_stay_in_their_bits_and_zero_is_never_returned() {
        assert_eq!(compose(5, RANDOM_MASK + 3), (5 << RANDOM_BITS) | 2);
        assert_eq!(compose(0, 0), 1);
        assert_eq!(compose(u64::MAX, u64::MAX), i64::MAX as u64);
    }
}

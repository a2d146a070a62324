//! IP address blocks (`10.0.0.0/8`, `2001:db8::/32`, or a single address) as used by the
//! `source-address` critical option, and containment between them. Pure.

use std::net::IpAddr;

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR/BITS` or a bare address (a full-length block).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match bits {
            Some(b) => b.parse::<u8>().ok().filter(|n| *n <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    /// True when `addr` is inside `self` (an IPv4 address written as IPv6, `::ffff:a.b.c.d`,
    /// counts as the IPv4 address).
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        self.contains(&Cidr { addr, prefix })
    }

    /// True when every address of `inner` is inside `self`.
    pub fn contains(&self, inner: &Cidr) -> bool {
        let (outer_bits, width) = Cidr::bits(self.addr);
        let (inner_bits, inner_width) = Cidr::bits(inner.addr);
        if width != inner_width || inner.prefix < self.prefix {
            return false;
        }
        let shift = u32::from(width - self.prefix);
        shift >= 128 || (outer_bits >> shift) == (inner_bits >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).expect(s)
    }

    #[test]
    fn addresses_in_blocks() {
        assert!(c("10.0.0.0/8").contains_addr("10.9.8.7".parse().expect("ip")));
        assert!(c("127.0.0.1").contains_addr("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!c("10.0.0.0/8").contains_addr("11.0.0.1".parse().expect("ip")));
        assert!(!c("::1").contains_addr("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn parse_and_contain() {
        assert!(c("10.0.0.0/8").contains(&c("10.1.2.0/24")));
        assert!(c("10.0.0.0/8").contains(&c("10.1.2.3")));
        assert!(!c("10.0.0.0/8").contains(&c("11.0.0.0/24")));
        assert!(!c("10.1.2.0/24").contains(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").contains(&c("192.168.1.1")));
        assert!(!c("0.0.0.0/0").contains(&c("::1")));
        assert!(c("2001:db8::/32").contains(&c("2001:db8:1::/48")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
    }
}

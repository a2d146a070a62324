//! Who the client is, behind a proxy: the peer's address, unless the peer is one of
//! `[server] trusted_proxies`, in which case the nearest address in `X-Forwarded-For`
//! that is not a trusted proxy itself. Audit records, rate limits and logs all use it.
//!
//! Each proxy appends the address it received the request from, so the header reads
//! `client, proxy1, proxy2` and only its right end is vouched for: the walk goes from the
//! right and stops at the first address no trusted proxy owns. A client can write
//! whatever it likes at the left end, which is why an untrusted peer's header is ignored
//! and a header that does not parse counts as absent. Pure: no I/O.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::cidr::Cidr;

/// The client's address for a request from `peer` with `headers`.
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> SocketAddr {
    let trusts = |ip: IpAddr| trusted.iter().any(|block| block.contains_addr(ip));
    if trusted.is_empty() || !trusts(peer.ip()) {
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for hop in text.split(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip.to_canonical()),
                Err(_) => return peer,
            }
        }
    }
    let client = hops
        .iter()
        .rev()
        .find(|ip| !trusts(**ip))
        .or(hops.first())
        .copied();
    client.map_or(peer, |ip| SocketAddr::new(ip, peer.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", v.parse().expect("value"));
        }
        map
    }

    fn blocks(list: &[&str]) -> Vec<Cidr> {
        list.iter()
            .map(|b| Cidr::parse(b).expect("block"))
            .collect()
    }

    fn ip(addr: SocketAddr) -> String {
        addr.ip().to_string()
    }

    #[test]
    fn only_a_trusted_peer_names_the_client() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let stranger: SocketAddr = "198.51.100.7:4000".parse().expect("addr");
        let trusted = blocks(&["10.0.0.0/8"]);
        let h = headers(&["203.0.113.9"]);
        assert_eq!(ip(client_address(proxy, &h, &trusted)), "203.0.113.9");
        assert_eq!(ip(client_address(stranger, &h, &trusted)), "198.51.100.7");
        assert_eq!(ip(client_address(proxy, &h, &[])), "10.0.0.5");
        assert_eq!(
            ip(client_address(proxy, &HeaderMap::new(), &trusted)),
            "10.0.0.5"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client_and_forged_left_ends_do_not_count() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().expect("addr");
        let trusted = blocks(&["10.0.0.0/8", "192.0.2.1"]);
        // The client wrote a forged address first; the outer proxy appended the real one.
        let h = headers(&["1.2.3.4, 203.0.113.9, 192.0.2.1"]);
        assert_eq!(ip(client_address(proxy, &h, &trusted)), "203.0.113.9");
        // Two header lines read as one list.
        let h = headers(&["1.2.3.4", "203.0.113.9, 10.1.1.1"]);
        assert_eq!(ip(client_address(proxy, &h, &trusted)), "203.0.113.9");
        // Every hop trusted: the leftmost.
        let h = headers(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(ip(client_address(proxy, &h, &trusted)), "10.9.9.9");
        // Garbage: the peer itself.
        let h = headers(&["203.0.113.9, not-an-address"]);
        assert_eq!(ip(client_address(proxy, &h, &trusted)), "10.0.0.5");
    }
}

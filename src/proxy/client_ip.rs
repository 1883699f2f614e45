//! Who the client is, for source-IP affinity: the connection's peer, or, when the peer is a
//! trusted proxy (`--trusted-proxies`), the address that proxy reports in
//! `X-Forwarded-For`. The list is read from the right (the entry the nearest proxy
//! appended) and the first address that is not itself a trusted proxy is the client, so a
//! client cannot choose its identity by sending a forged `X-Forwarded-For` through a
//! trusted proxy that appends to it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;

use super::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// One address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 { 0 } else { bits >> (width - prefix) }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr =
            address.parse().map_err(|_| format!("'{text}' is not an address block (a.b.c.d/n or ipv6/n)"))?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= width)
                .ok_or_else(|| format!("'{text}' has an invalid prefix length (0 to {width})"))?,
        };
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: addresses are compared as IPv4 when mapped.
        match network {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                Ok(Cidr { network: network.to_canonical(), prefix: prefix - 96 })
            }
            _ => Ok(Cidr { network, prefix }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The peers whose `X-Forwarded-For` is believed (`--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Every peer: the original mpp's behaviour, and the default.
    pub fn everyone() -> Self {
        TrustedProxies(vec!["0.0.0.0/0".parse().expect("valid"), "::/0".parse().expect("valid")])
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// Removes the `X-Forwarded-*` headers a peer that is not a trusted proxy sent: what it
    /// says about earlier hops is not passed on to the replicas as if mpp vouched for it.
    pub fn drop_untrusted_forwarding(&self, headers: &mut HeaderMap, peer: IpAddr) {
        // Most requests carry none: a look at each name finds out without hashing three, and
        // before the peer is looked for among the trusted networks.
        let forwarding = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];
        if !headers.keys().any(|present| forwarding.contains(present)) || self.trusts(peer.to_canonical()) {
            return;
        }
        for name in forwarding {
            if headers.keys().any(|present| *present == name) {
                headers.remove(name);
            }
        }
    }

    /// The client's address: see the module documentation.
    pub fn client_address(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let peer = peer.to_canonical();
        // A look at each name is cheaper than a hashed lookup of one most requests lack.
        if !headers.keys().any(|name| name == X_FORWARDED_FOR) || !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded_ip(entry) else { break };
            client = ip.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of address blocks; `none` (or empty) trusts no peer.
    fn from_str(text: &str) -> Result<Self, String> {
        let blocks = text.split(',').map(str::trim).filter(|b| !b.is_empty() && *b != "none");
        Ok(TrustedProxies(blocks.map(str::parse).collect::<Result<_, _>>()?))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let blocks: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        f.write_str(&blocks.join(","))
    }
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443`, `1.2.3.4:80`.
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for value in values {
            h.append("x-forwarded-for", value.parse().unwrap());
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn trusting_everyone_takes_the_first_entry_as_before() {
        let all = TrustedProxies::everyone();
        let peer = ip("::ffff:127.0.0.1");
        assert_eq!(all.client_address(&HeaderMap::new(), peer), ip("127.0.0.1"));
        assert_eq!(all.client_address(&headers(&["2001:db8::1, 10.0.0.1"]), peer), ip("2001:db8::1"));
        assert_eq!(all.client_address(&headers(&["[2001:db8::2]:443"]), peer), ip("2001:db8::2"));
        assert_eq!(all.client_address(&headers(&["garbage"]), peer), ip("127.0.0.1"));
        assert_eq!(all.client_address(&headers(&["192.0.2.1", "10.0.0.1"]), peer), ip("192.0.2.1"), "two header lines");
    }

    #[test]
    fn only_trusted_peers_are_believed_and_the_rightmost_untrusted_entry_wins() {
        let trusted: TrustedProxies = "10.0.0.0/8, fd00::/8".parse().unwrap();
        let forged = headers(&["6.6.6.6, 192.0.2.7"]);
        assert_eq!(trusted.client_address(&forged, ip("203.0.113.9")), ip("203.0.113.9"), "untrusted peer");
        assert_eq!(trusted.client_address(&forged, ip("10.1.2.3")), ip("192.0.2.7"), "the forged entry is left of it");
        let chain = headers(&["192.0.2.7, 10.9.9.9"]);
        assert_eq!(trusted.client_address(&chain, ip("fd00::1")), ip("192.0.2.7"));
        let none: TrustedProxies = "none".parse().unwrap();
        assert_eq!(none.client_address(&chain, ip("10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn an_untrusted_peer_cannot_speak_for_earlier_hops() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let mut h = headers(&["6.6.6.6"]);
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        trusted.drop_untrusted_forwarding(&mut h, ip("10.0.0.9"));
        assert_eq!(h.len(), 2, "a trusted proxy's headers stay");
        trusted.drop_untrusted_forwarding(&mut h, ip("203.0.113.9"));
        assert!(h.is_empty(), "an untrusted peer's go");
    }

    #[test]
    fn blocks_parse_or_say_what_is_wrong() {
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().contains(ip("10.255.0.1")));
        assert!(!"10.0.0.0/8".parse::<Cidr>().unwrap().contains(ip("11.0.0.1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("::ffff:1.2.3.4")));
        assert!("192.0.2.1".parse::<Cidr>().unwrap().contains(ip("192.0.2.1")));
        assert!("::ffff:10.0.0.0/104".parse::<Cidr>().unwrap().contains(ip("10.9.8.7")));
        assert!("10.0.0.0/33".parse::<Cidr>().unwrap_err().contains("prefix"));
        assert!("ten/8".parse::<Cidr>().unwrap_err().contains("'ten/8'"));
    }
}

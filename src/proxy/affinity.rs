//! Session affinity: keeping a client on one replica while more than one is selected, so
//! that a dashboard's panels agree with each other. Two modes, as in the original: a cookie
//! naming the replica by its opaque id, and the client's address.
//!
//! The address picks its replica by rendezvous (highest-random-weight) hashing: each selected
//! replica weighs the address by a hash of the two, and the heaviest wins. Every mpp instance
//! with the same selection sends a client to the same replica, with no state shared and no
//! table to grow; when a replica leaves, only its clients move (each to its next heaviest);
//! when one joins, only the clients it outweighs move to it. Neither mode ever routes to a
//! replica that is no longer selected, or that is found down.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, header};

use crate::registry::Replica;
use crate::selection::Snapshot;

/// The cookie the original mpp sets.
pub const COOKIE: &str = "MPP.Route";

/// Which sticky-session modes are on (`--affinity-options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AffinityOptions {
    /// `cookies`: an `MPP.Route` cookie names the replica.
    pub cookies: bool,
    /// `sourceip`: the client's address (see [`super::client_ip`]) does.
    pub source_ip: bool,
}

impl FromStr for AffinityOptions {
    type Err = String;

    /// A comma-separated list of `cookies` and `sourceip`; empty or `none` turns affinity off.
    fn from_str(value: &str) -> Result<Self, String> {
        let mut options = AffinityOptions::default();
        for option in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match option {
                "cookies" => options.cookies = true,
                "sourceip" => options.source_ip = true,
                "none" => {}
                other => return Err(format!("unknown affinity option '{other}'; valid: cookies, sourceip, none")),
            }
        }
        Ok(options)
    }
}

impl fmt::Display for AffinityOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.cookies, self.source_ip) {
            (true, true) => f.write_str("cookies,sourceip"),
            (true, false) => f.write_str("cookies"),
            (false, true) => f.write_str("sourceip"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// How a request was routed by affinity, for the `mpp_affinity_hits_total{type}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// By the `MPP.Route` cookie.
    Cookie,
    /// By the client's address.
    SourceIp,
}

impl Sticky {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Sticky::Cookie => "cookies",
            Sticky::SourceIp => "sourceip",
        }
    }
}

/// Affinity's modes: all it needs, since neither mode keeps state.
pub struct Affinity {
    options: AffinityOptions,
}

impl Affinity {
    /// Affinity with the given modes.
    pub fn new(options: AffinityOptions) -> Self {
        Affinity { options }
    }

    /// Whether the `MPP.Route` cookie pins clients (otherwise requests' cookies are not read).
    pub fn uses_cookies(&self) -> bool {
        self.options.cookies
    }

    /// The replica this client is pinned to, if it is still selected. Only consulted when
    /// more than one replica is selected.
    /// `cookie` is the value of the request's `MPP.Route` cookie ([`route_cookie`]).
    pub fn preferred(
        &self,
        snapshot: &Snapshot,
        cookie: Option<&str>,
        client: IpAddr,
    ) -> Option<(Arc<Replica>, Sticky)> {
        if snapshot.selected.len() < 2 {
            return None;
        }
        if self.options.cookies {
            let pinned = cookie.and_then(|id| snapshot.selected_by_id(id));
            if let Some(backend) = pinned.filter(|b| !b.health().is_down()) {
                return Some((backend.clone(), Sticky::Cookie));
            }
        }
        if !self.options.source_ip {
            return None;
        }
        let client = address_hash(client);
        let live = snapshot.selected.iter().filter(|r| !r.health().is_down());
        live.max_by_key(|r| weight(r.key(), client)).map(|r| (r.clone(), Sticky::SourceIp))
    }

    /// Pins the client to the replica that served it: a `Set-Cookie` on the answer when the
    /// client's cookie does not already name it (the address needs nothing: it picks the
    /// same replica again).
    pub fn remember(&self, snapshot: &Snapshot, cookie: Option<&str>, served: &Arc<Replica>, answer: &mut HeaderMap) {
        if snapshot.selected.len() < 2 || !snapshot.selected.contains(served) {
            return;
        }
        if self.options.cookies && cookie != Some(served.id()) {
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax", served.id());
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                answer.append(header::SET_COOKIE, value);
            }
        }
    }
}

/// A replica's weight for a client: the replica's key (a hash of its URL, the same on every
/// mpp instance) and the client's hash, mixed.
fn weight(replica: u64, client: u64) -> u64 {
    mix(replica ^ client)
}

/// A client address's hash; an IPv4 address and its IPv6-mapped form are one client.
fn address_hash(address: IpAddr) -> u64 {
    let bits = match address.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    };
    mix(mix(bits as u64) ^ (bits >> 64) as u64)
}

/// The 64-bit finalizer of SplitMix64: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value of the `MPP.Route` cookie, if the request carries one.
pub fn route_cookie(headers: &HeaderMap) -> Option<&str> {
    // A look at each name is cheaper than a hashed lookup of one most requests lack.
    if !headers.keys().any(|name| name == header::COOKIE) {
        return None;
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    /// Where each of 1,000 client addresses goes by source-IP affinity over `urls`.
    fn placement(urls: &[&str]) -> Vec<String> {
        let affinity = Affinity::new(AffinityOptions { cookies: false, source_ip: true });
        let mut snapshot = Snapshot::empty();
        snapshot.selected = crate::registry::tests::replicas(urls);
        (0..1000u32)
            .map(|i| {
                let client = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                let (replica, sticky) = affinity.preferred(&snapshot, None, client).expect("two or more selected");
                assert_eq!(sticky, Sticky::SourceIp);
                replica.url().to_string()
            })
            .collect()
    }

    #[test]
    fn addresses_spread_over_the_replicas_and_only_a_leaving_replicas_clients_move() {
        let three = ["http://a:9090", "http://b:9090", "http://c:9090"];
        let before = placement(&three);
        for url in three {
            let share = before.iter().filter(|u| *u == url).count();
            assert!((250..=420).contains(&share), "{url} has {share} of 1000 clients");
        }
        assert_eq!(placement(&["http://c:9090", "http://a:9090", "http://b:9090"]), before, "order does not matter");
        let after = placement(&["http://a:9090", "http://c:9090"]);
        for (was, is) in before.iter().zip(&after) {
            if was != "http://b:9090" {
                assert_eq!(was, is, "a client of a staying replica moved");
            }
        }
        let joined = placement(&["http://a:9090", "http://b:9090", "http://c:9090", "http://d:9090"]);
        for (was, is) in before.iter().zip(&joined) {
            assert!(is == was || is == "http://d:9090", "a client moved to {is}, not to the new replica");
        }
        assert!(joined.iter().any(|u| u == "http://d:9090"));
    }

    #[test]
    fn an_ipv4_client_and_its_mapped_ipv6_form_are_one_client() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_hash(v4), address_hash(mapped));
        assert_ne!(address_hash(v4), address_hash("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn options_parse() {
        let o: AffinityOptions = "cookies, sourceip".parse().unwrap();
        assert!(o.cookies && o.source_ip);
        assert_eq!("".parse::<AffinityOptions>().unwrap(), AffinityOptions::default());
        assert!("cookie".parse::<AffinityOptions>().unwrap_err().contains("'cookie'"));
    }

    #[test]
    fn finds_the_route_cookie_among_others() {
        let h = headers(&[("cookie", "a=1; MPP.Route=abc ; b=2")]);
        assert_eq!(route_cookie(&h), Some("abc"));
        assert_eq!(route_cookie(&headers(&[("cookie", "MPP.Routes=x")])), None);
    }
}

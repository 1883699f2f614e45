//! Session affinity: keeping a client on one replica while more than one is selected, so
//! that a dashboard's panels agree with each other. Two modes, as in the original: a cookie
//! naming the replica by its opaque id, and a bounded table from client address to replica.
//! Neither ever routes to a replica that is no longer selected.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, header};
use lru::LruCache;

use crate::registry::Replica;
use crate::selection::Snapshot;

/// The cookie the original mpp sets.
pub const COOKIE: &str = "MPP.Route";

/// How many client addresses `sourceip` remembers; the least recently seen go first.
const SOURCE_IP_ENTRIES: usize = 65_536;

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

/// The affinity state. The source-IP table is the only lock on the request path; only
/// requests take it, never background work, and never across an `.await`.
pub struct Affinity {
    options: AffinityOptions,
    table: Option<Mutex<LruCache<IpAddr, Arc<Replica>>>>,
}

impl Affinity {
    /// Affinity with the given modes.
    pub fn new(options: AffinityOptions) -> Self {
        let capacity = NonZeroUsize::new(SOURCE_IP_ENTRIES).expect("the capacity is not zero");
        let table = options.source_ip.then(|| Mutex::new(LruCache::new(capacity)));
        Affinity { options, table }
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
        let table = self.table.as_ref()?;
        let pinned = table.lock().unwrap_or_else(|e| e.into_inner()).get(&client).cloned()?;
        (snapshot.selected.contains(&pinned) && !pinned.health().is_down()).then_some((pinned, Sticky::SourceIp))
    }

    /// Pins the client to the replica that served it: a `Set-Cookie` on the answer when the
    /// client's cookie does not already name it, and an entry in the source-IP table.
    pub fn remember(
        &self,
        snapshot: &Snapshot,
        cookie: Option<&str>,
        client: IpAddr,
        served: &Arc<Replica>,
        answer: &mut HeaderMap,
    ) {
        if snapshot.selected.len() < 2 || !snapshot.selected.contains(served) {
            return;
        }
        if self.options.cookies && cookie != Some(served.id()) {
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax", served.id());
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                answer.append(header::SET_COOKIE, value);
            }
        }
        if let Some(table) = &self.table {
            let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
            if table.get(&client) != Some(served) {
                table.put(client, served.clone());
            }
        }
    }
}

/// The value of the `MPP.Route` cookie, if the request carries one.
pub fn route_cookie(headers: &HeaderMap) -> Option<&str> {
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

//! Rewriting a request for a backend and an answer for the client: hop-by-hop headers out,
//! `X-Forwarded-*` in, the `MPP.ServedBy` header on every answer.

use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// The header naming the replica that answered, as the original mpp calls it.
pub static SERVED_BY: HeaderName = HeaderName::from_static("mpp.servedby");

/// Headers that describe one connection, not the message (RFC 9110, section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Turns the client's headers into the backend request's: hop-by-hop headers and `Host`
/// removed (the client sets the backend's), `Expect` removed (the body is already read),
/// the peer appended to `X-Forwarded-For`, and `X-Forwarded-Proto`/`-Host` set unless an
/// earlier proxy set them.
pub fn request_headers(mut headers: HeaderMap, peer: IpAddr) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    let host = headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    let peer = peer.to_canonical().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {peer}"),
        _ => peer,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        headers.entry("x-forwarded-host").or_insert(host);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarded_headers_come() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::HOST, "grafana.example:9090".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        let out = request_headers(h, "::ffff:192.0.2.7".parse().unwrap());
        assert!(out.get("x-secret").is_none() && out.get(header::TE).is_none());
        assert!(out.get(header::HOST).is_none());
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-host"], "grafana.example:9090");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out[header::ACCEPT], "application/json");
    }
}

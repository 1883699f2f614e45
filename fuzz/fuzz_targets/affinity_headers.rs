//! The affinity inputs a client controls: the `Cookie` and `X-Forwarded-For` headers.
//! Never panics; the cookie value found is a substring of the header.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (cookie, forwarded) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(cookie) {
        headers.insert("cookie", value);
    }
    if let Ok(value) = HeaderValue::from_bytes(forwarded) {
        headers.insert("x-forwarded-for", value);
    }
    if let Some(route) = mpp::fuzzing::route_cookie(&headers) {
        assert!(headers["cookie"].to_str().unwrap().contains(route));
    }
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let _ = mpp::fuzzing::TrustedProxies::everyone().client_address(&headers, peer);
});

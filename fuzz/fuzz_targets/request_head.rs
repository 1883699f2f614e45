//! The request-head path: everything mpp does with a client's request line and headers
//! before forwarding them (`server::head::check`, the header rewriting, the client address,
//! the `timeout` a query gets). Input: a request line, then `name: value` lines, then (after
//! an empty line) a body. Never panics; the rewritten headers carry one `X-Forwarded-For`
//! ending in the peer and no hop-by-hop header; a query's added `timeout` keeps its path.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::{HeaderMap, Request, header};
use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::TrustedProxies;
use mpp::fuzzing::headers;
use mpp::fuzzing::head;
use mpp::fuzzing::Pseudonym;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head_text, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head_text.lines();
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (method, target) = (request_line.next().unwrap_or("GET"), request_line.next().unwrap_or("/"));
    let Ok(mut request) = Request::builder().method(method).uri(target).body(()) else { return };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (Ok(name), Ok(value)) = (name.trim().parse::<header::HeaderName>(), value.trim().parse()) else { continue };
        request.headers_mut().append(name, value);
    }
    let us = Pseudonym::from_token("mpp-fuzz".into());
    let _ = head::check(&request, &us, true);

    let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let trusted: TrustedProxies = "10.0.0.0/8".parse().expect("valid blocks");
    let _ = trusted.client_address(request.headers(), peer);
    let _ = TrustedProxies::everyone().client_address(request.headers(), peer);
    let _ = mpp::fuzzing::route_cookie(request.headers());

    if let Some(path_and_query) = request.uri().path_and_query() {
        if headers::wants_timeout(mpp::fuzzing::Api::of(path_and_query.path()), path_and_query, request.headers(), body.as_bytes()) {
            let timeout = headers::timeout_parameter(path_and_query, Duration::from_millis(1500));
            let timed = format!("{path_and_query}{}", timeout.as_str());
            let timed: http::uri::PathAndQuery = timed.parse().expect("the timeout parameter keeps the target valid");
            assert_eq!(timed.path(), path_and_query.path());
        }
    }
    let (out, added): (HeaderMap, _) = headers::request_headers(request.headers().clone(), peer, false);
    assert!(!out.contains_key("x-forwarded-for"), "the client's line makes way for mpp's");
    let forwarded: Vec<_> =
        added.lines().iter().filter(|(name, _)| name == "x-forwarded-for").map(|(_, value)| value).collect();
    assert_eq!(forwarded.len(), 1);
    assert!(forwarded[0].to_str().unwrap().ends_with("10.1.2.3"));
    for hop in [header::CONNECTION, header::TE, header::TRANSFER_ENCODING, header::UPGRADE, header::HOST] {
        assert!(!out.contains_key(hop));
    }
});

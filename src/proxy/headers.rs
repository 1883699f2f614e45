//! Rewriting a request for a backend and an answer for the client: hop-by-hop headers out,
//! `X-Forwarded-*` in, the `MPP.ServedBy` header on every answer.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Response};

use crate::api::{Api, Endpoint};
use crate::http1::Role;

/// The de facto forwarding headers, as names made once.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// See [`X_FORWARDED_FOR`].
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// See [`X_FORWARDED_FOR`].
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The header naming the replica that answered, as the original mpp calls it.
pub static SERVED_BY: HeaderName = HeaderName::from_static("mpp.servedby");

/// Whether `name` describes one connection, not the message (RFC 9110, section 7.6.1; the
/// `Proxy-Connection` of old clients too): the set the answer parser leaves out, told the
/// same way ([`Role`]).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    Role::of(name.as_str().as_bytes()).is_hop_by_hop()
}

/// Removes hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests have none, and most answers only `Connection` (a replica's
    // `Connection: keep-alive`): a look at each name present (standard names compare as
    // integers) finds them, and only those are removed, rather than hashing every
    // hop-by-hop name to remove nothing, which showed in the profile.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // What `Connection` names besides the hop-by-hop headers removed anyway (`keep-alive`,
    // the usual token, is one of them). A field named like an option (`Close: x`) goes too,
    // as RFC 9110 section 7.6.1 requires.
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect();
    doomed.extend(headers.keys().filter(|name| is_hop_by_hop(name)).cloned());
    for name in &doomed {
        headers.remove(name);
    }
}

/// Turns the client's headers into the backend request's: hop-by-hop headers and `Host`
/// removed (the client sets the backend's), `Expect` removed (the body is already read); and
/// the forwarding headers mpp adds beside them: the peer appended to `X-Forwarded-For`, and
/// `X-Forwarded-Proto`/`-Host` unless an earlier proxy set them. Those are kept apart from the
/// map and written after its headers (four hashed inserts into the map cost about a thousand
/// instructions a request).
pub fn request_headers(mut headers: HeaderMap, peer: IpAddr, tls: bool) -> (HeaderMap, Added) {
    strip_hop_by_hop(&mut headers);
    // Which of the headers looked at below the client sent: one look at each name is
    // cheaper than hashing names that most requests do not carry.
    let (mut host, mut expect, mut forwarded_for, mut forwarded_proto, mut forwarded_host) =
        (false, false, false, false, false);
    for name in headers.keys() {
        host |= name == header::HOST;
        expect |= name == header::EXPECT;
        forwarded_for |= name == X_FORWARDED_FOR;
        forwarded_proto |= name == X_FORWARDED_PROTO;
        forwarded_host |= name == X_FORWARDED_HOST;
    }
    let host = if host { headers.remove(header::HOST) } else { None };
    if expect {
        headers.remove(header::EXPECT);
    }
    let mut added = Added(Vec::with_capacity(4));
    let forwarded_for = if !forwarded_for {
        peer_value(peer)
    } else {
        let earlier = headers.get_all(X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
        let mut forwarded_for = String::new();
        for earlier in earlier {
            if !earlier.trim().is_empty() {
                forwarded_for.push_str(earlier.trim());
                forwarded_for.push_str(", ");
            }
        }
        let _ = write!(forwarded_for, "{}", peer.to_canonical());
        headers.remove(X_FORWARDED_FOR);
        HeaderValue::from_str(&forwarded_for).ok()
    };
    if let Some(value) = forwarded_for {
        added.0.push((X_FORWARDED_FOR, value));
    }
    if !forwarded_proto {
        added.0.push((X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" })));
    }
    if let Some(host) = host.filter(|_| !forwarded_host) {
        added.0.push((X_FORWARDED_HOST, host));
    }
    (headers, added)
}

/// The headers mpp adds to a request it forwards (see [`request_headers`]), written after the
/// client's.
#[derive(Debug, Clone, Default)]
pub struct Added(Vec<(HeaderName, HeaderValue)>);

impl Added {
    /// Adds `name: value`, after those added before.
    pub fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.push((name, value));
    }

    /// The headers, in the order they were added.
    pub fn lines(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }

    /// The value of the first added header named `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// `peer` as an `X-Forwarded-For` value, formatted once for a run of requests from the same
/// address (a client's requests come from one address, and formatting one showed in the
/// profile).
fn peer_value(peer: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((ip, value)) = last.as_ref()
            && *ip == peer
        {
            return Some(value.clone());
        }
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_canonical().to_string())).ok()?;
        *last = Some((peer, value.clone()));
        Some(value)
    })
}

/// Marks a request that arrived over TLS (a request extension the listener sets), so that
/// `X-Forwarded-Proto` says `https` unless a trusted proxy already said otherwise.
#[derive(Debug, Clone, Copy)]
pub struct ClientTls;

/// Whether an answer is the Prometheus HTTP API's own (JSON, `errorType` and all): such an
/// answer, error or not, goes to the client as it is. A replica that is not ready (replaying
/// its WAL) answers 503 in plain text instead.
pub fn is_api_answer<B>(response: &Response<B>) -> bool {
    // Another mpp's own error (an mpp in front of mpp) is no replica's answer.
    if response.headers().contains_key(&crate::error::MPP_ERROR) {
        return false;
    }
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// Whether a request is a query (`query`, `query_range`: those that take Prometheus's `timeout`
/// parameter) that names no `timeout` (in its URL, or in its form body), so
/// that mpp passes the time it has left on as one.
pub fn wants_timeout(api: Api, path_and_query: &PathAndQuery, headers: &HeaderMap, body: &[u8]) -> bool {
    if !matches!(api, Api::Read(Endpoint::Query | Endpoint::QueryRange)) {
        return false;
    }
    let names_timeout = |form: &[u8]| names_field(form, "timeout");
    if path_and_query.query().is_some_and(|q| names_timeout(q.as_bytes())) {
        return false;
    }
    body.is_empty() || !form_body(headers, body).is_some_and(names_timeout)
}

/// Whether the form `form` (a query string, or a form body) has a field named `name`. Only a
/// name with an escape (`%`, `+`) is decoded, not every field (decoding a query's PromQL to
/// look at its name showed in the profile).
fn names_field(form: &[u8], name: &str) -> bool {
    form.split(|&b| b == b'&').any(|field| {
        let raw = field.split(|&b| b == b'=').next().unwrap_or_default();
        if raw.iter().any(|&b| b == b'%' || b == b'+') {
            form_urlencoded::parse(raw).next().is_some_and(|(decoded, _)| decoded == name)
        } else {
            raw == name.as_bytes()
        }
    })
}

/// The body, when it is a form (`application/x-www-form-urlencoded`), whose fields Prometheus
/// reads as parameters.
pub fn form_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Option<&'a [u8]> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    form.then_some(body)
}

/// Names the replicas an answer was merged from (`MPP-Merged-From: <primary>, <others>`).
pub static MERGED_FROM: HeaderName = HeaderName::from_static("mpp-merged-from");
/// Names the replicas that failed before the one that answered (`MPP-Failover-From`).
pub static FAILOVER_FROM: HeaderName = HeaderName::from_static("mpp-failover-from");
/// Tells, on each answer the dashboard cache took part in, where its steps came from
/// (`MPP-Cache: hit|partial|miss`).
pub static MPP_CACHE: HeaderName = HeaderName::from_static("mpp-cache");
/// The replicas a request for every replica (a write, an admin request) was sent to.
pub static SENT_TO: HeaderName = HeaderName::from_static("mpp-sent-to");
/// The `MPP-Warning` of a remote read no replica holds whole, answered by the replica missing
/// the least of it (its answer is streamed chunks, which mpp does not join).
pub static INCOMPLETE_READ: HeaderValue = HeaderValue::from_static(
    "no replica holds all data this remote read asks for; this is the answer of the one missing the least",
);
/// Says why an answer is not what mpp would have liked to send (a merge over its bound).
pub static MPP_WARNING: HeaderName = HeaderName::from_static("mpp-warning");

/// Whether an answer is a Prometheus API JSON answer that mpp can read: JSON, not
/// compressed.
pub fn is_plain_json(headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    json && headers.get(header::CONTENT_ENCODING).is_none_or(|e| e == "identity")
}

/// What is added to `path_and_query` to pass `timeout=<seconds>` (Prometheus reads a bare
/// number as seconds): `?timeout=…` or `&timeout=…`. Made without an allocation, per attempt.
pub fn timeout_parameter(path_and_query: &PathAndQuery, left: Duration) -> TimeoutParameter {
    // Whole milliseconds, written as integers: float formatting showed in the profile.
    let millis = left.as_millis().max(1);
    let separator = match path_and_query.query() {
        Some("") => "",
        Some(_) => "&",
        None => "?",
    };
    // 48 bytes hold the longest there can be: `&timeout=`, the seconds of a u128 of
    // milliseconds capped to a u64 (20 digits), `.` and 3 digits of milliseconds make 33.
    // Written digit by digit: the formatting machinery showed in the profile.
    let mut parameter = TimeoutParameter { text: [0; 48], len: 0 };
    let seconds = u64::try_from(millis / 1000).unwrap_or(u64::MAX);
    let fraction = (millis % 1000) as u64;
    parameter.push(separator.as_bytes());
    parameter.push(b"timeout=");
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = seconds;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    parameter.push(&digits[at..]);
    parameter.push(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
    parameter
}

/// A `timeout` query parameter, ready to be written after the path and query.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutParameter {
    text: [u8; 48],
    len: usize,
}

impl TimeoutParameter {
    fn push(&mut self, bytes: &[u8]) {
        self.text[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The parameter as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text[..self.len]).unwrap_or("")
    }
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
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.append(header::UPGRADE, "h2c".parse().unwrap());
        h.append(header::UPGRADE, "websocket".parse().unwrap());
        let (out, added) = request_headers(h, "::ffff:192.0.2.7".parse().unwrap(), false);
        assert!(out.get("x-secret").is_none() && out.get(header::TE).is_none());
        for gone in [header::CONNECTION, HeaderName::from_static("keep-alive"), header::UPGRADE] {
            assert!(!out.contains_key(&gone), "{gone}: {out:?}");
        }
        assert!(!out.contains_key("proxy-connection"), "{out:?}");

        // Every option `Connection` names, on any of its lines and in any case, takes the
        // field of that name with it.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Close".parse().unwrap());
        h.append(header::CONNECTION, " X-Hop ,keep-alive".parse().unwrap());
        h.insert("close", "x".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("x-kept", "2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-kept"], "{h:?}");
        assert!(out.get(header::HOST).is_none());
        assert!(out.get("x-forwarded-for").is_none(), "the client's line makes way for the one mpp adds");
        let names: Vec<_> = added.lines().iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]);
        assert_eq!(added.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 192.0.2.7");
        assert_eq!(added.get(&X_FORWARDED_HOST).unwrap(), "grafana.example:9090");
        assert_eq!(added.get(&X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(out[header::ACCEPT], "application/json");

        // What an earlier proxy said of the protocol and the host stays as it said it.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "mpp.example".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "grafana.example".parse().unwrap());
        let (out, added) = request_headers(h, "192.0.2.7".parse().unwrap(), false);
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "grafana.example");
        let names: Vec<_> = added.lines().iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["x-forwarded-for"]);
    }

    #[test]
    fn forwarded_for_keeps_every_earlier_header_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "192.0.2.1".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.1, 10.0.0.2".parse().unwrap());
        let (out, added) = request_headers(h, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 0);
        assert_eq!(added.get(&X_FORWARDED_FOR).unwrap(), "192.0.2.1, 10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(added.get(&X_FORWARDED_PROTO).unwrap(), "https", "the request came over TLS");
    }

    #[test]
    fn queries_without_a_timeout_get_the_time_left() {
        let pq = |s: &str| s.parse::<PathAndQuery>().unwrap();
        let wants =
            |s: &str, headers: &HeaderMap, body: &[u8]| wants_timeout(Api::of(pq(s).path()), &pq(s), headers, body);
        let none = HeaderMap::new();
        assert!(wants("/api/v1/query?query=up", &none, b""));
        assert!(wants("/prom/api/v1/query_range?query=up&step=1", &none, b""));
        assert!(!wants("/api/v1/query?query=up&timeout=5s", &none, b""));
        assert!(!wants("/api/v1/series?match[]=up", &none, b""));
        let mut form = HeaderMap::new();
        form.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
        assert!(!wants("/api/v1/query", &form, b"query=up&timeout=1m"));
        assert!(wants("/api/v1/query", &form, b"query=up"));
        assert!(!wants("/api/v1/query?query=up&time%6Fut=5s", &none, b""), "an escaped name is read decoded");
        assert!(!wants("/api/v1/query?timeout&query=up", &none, b""), "a name without a value is a name");
        assert!(wants("/api/v1/query?query=timeout&timeouts=1", &none, b""), "a value or a longer name is not");
        let timed = timeout_parameter(&pq("/api/v1/query?query=up"), Duration::from_millis(119_500));
        assert_eq!(timed.as_str(), "&timeout=119.500");
        assert_eq!(timeout_parameter(&pq("/api/v1/query"), Duration::ZERO).as_str(), "?timeout=0.001");
        assert_eq!(timeout_parameter(&pq("/api/v1/query?"), Duration::from_millis(10_050)).as_str(), "timeout=10.050");
        assert_eq!(timeout_parameter(&pq("/api/v1/query?a=b"), Duration::from_millis(7)).as_str(), "&timeout=0.007");
        let longest = timeout_parameter(&pq("/api/v1/query?a=b"), Duration::MAX);
        assert_eq!(longest.as_str(), "&timeout=18446744073709551615.999");
    }
}

//! Checks of a request's head that hyper leaves to us, made before anything is forwarded:
//! each refusal names what is wrong. Kept apart (and public through [`crate::fuzzing`]) so
//! that a fuzz target can throw arbitrary heads at it.

use http::{Method, Request, Version, header};

use crate::error::ProxyError;
use crate::via::Pseudonym;

/// Whether the head may be served; the refusal otherwise. `proxied`: the request is for a
/// replica (not an `/mpp/` path), and so subject to loop detection.
pub fn check<B>(request: &Request<B>, pseudonym: &Pseudonym, proxied: bool) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT".into()));
    }
    let headers = request.headers();
    if headers.len() > super::MAX_HEADERS {
        // An HTTP/1 head has at most this many (the listener refuses more); HTTP/2's HPACK
        // lets a few bytes stand for many lines, which the replica would get written out.
        return Err(ProxyError::HeadTooLarge(format!(
            "{} header fields; at most {} are taken",
            headers.len(),
            super::MAX_HEADERS
        )));
    }
    // One look at each line's name (standard names compare as integers) instead of three
    // hashed lookups of names that most requests have once or not at all.
    let (mut hosts, mut coded, mut via) = (0, false, false);
    for (name, _) in headers {
        if name == header::HOST {
            hosts += 1;
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
        } else if name == header::VIA {
            via = true;
        }
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest(format!("{hosts} Host headers; exactly one is allowed (RFC 9112, 3.2)")));
    }
    if hosts == 0 && request.version() == Version::HTTP_11 {
        return Err(ProxyError::BadRequest("no Host header; HTTP/1.1 requires one (RFC 9112, 3.2)".into()));
    }
    if coded {
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            let codings = value.to_str().unwrap_or("?");
            if codings.split(',').map(str::trim).any(|c| !c.eq_ignore_ascii_case("chunked")) {
                return Err(ProxyError::NotImplemented(format!(
                    "Transfer-Encoding '{codings}'; only chunked is supported"
                )));
            }
        }
    }
    if proxied && via && pseudonym.seen_in(headers) {
        return Err(ProxyError::LoopDetected(pseudonym.token().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/api/v1/query?query=up");
        for (name, value) in lines {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn status(result: Result<(), ProxyError>) -> u16 {
        result.map_or_else(|e| e.status().as_u16(), |()| 200)
    }

    #[test]
    fn refuses_what_cannot_be_forwarded_safely() {
        let us = Pseudonym::from_token("mpp-1".into());
        assert_eq!(status(check(&request(&[("host", "a")]), &us, true)), 200);
        assert_eq!(status(check(&request(&[]), &us, true)), 400, "no Host");
        assert_eq!(status(check(&request(&[("host", "a"), ("host", "b")]), &us, true)), 400, "two Hosts");
        let te = request(&[("host", "a"), ("transfer-encoding", "gzip, chunked")]);
        assert_eq!(status(check(&te, &us, true)), 501);
        let chunked = request(&[("host", "a"), ("transfer-encoding", "chunked")]);
        assert_eq!(status(check(&chunked, &us, true)), 200);
        let connect = Request::connect("a:443").header("host", "a:443").body(()).unwrap();
        assert_eq!(status(check(&connect, &us, true)), 405);
        let mut http10 = request(&[]);
        *http10.version_mut() = Version::HTTP_10;
        assert_eq!(status(check(&http10, &us, true)), 200, "HTTP/1.0 needs no Host");
        let many: Vec<(String, String)> = (0..300).map(|i| (format!("x-{i}"), "1".to_string())).collect();
        let mut crowded = request(&[("host", "a")]);
        for (name, value) in &many {
            crowded.headers_mut().insert(http::HeaderName::try_from(name.as_str()).unwrap(), value.parse().unwrap());
        }
        assert_eq!(status(check(&crowded, &us, true)), 431, "more header lines than HTTP/1 takes");
    }

    #[test]
    fn a_request_that_came_through_this_mpp_is_a_loop_and_others_are_not() {
        let us = Pseudonym::from_token("mpp-00ff".into());
        let looped = request(&[("host", "a"), ("via", "1.1 proxy-a, 1.1 mpp-00ff")]);
        assert_eq!(status(check(&looped, &us, true)), 508);
        assert_eq!(status(check(&looped, &us, false)), 200, "admin paths are never forwarded");
        let other = request(&[("host", "a"), ("via", "1.1 mpp-00ffee (mpp)"), ("via", "2 mpp-00f")]);
        assert_eq!(status(check(&other, &us, true)), 200, "another mpp's pseudonym");
        let another: http::HeaderMap = [(header::VIA, Pseudonym::random().via().clone())].into_iter().collect();
        assert!(!Pseudonym::random().seen_in(&another), "two processes have different pseudonyms");
    }
}

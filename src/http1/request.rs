//! Request heads: written by the request path's client in one piece ([`write_head`]),
//! parsed by the listener ([`parse_request`]) with hyper's server limits and RFC 9112's
//! framing rules: `Transfer-Encoding` ending in `chunked` wins over a `Content-Length`
//! (which is dropped, and the connection is not kept, so nothing smuggled behind the body is
//! read as a request); conflicting lengths, a `Transfer-Encoding` not ending in `chunked`, or
//! one in HTTP/1.0 are refused.

use bytes::BytesMut;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::{
    Decoder, Framing, FramingHeaders, content_length, ends_in_chunked, format_u64, header_line, header_name, keep_alive,
};

/// The longest request target taken; longer ones get 414 (hyper's limit).
pub const MAX_TARGET: usize = u16::MAX as usize - 1;
/// The most header lines in a request head (and fields in an HTTP/2 request); more get 431.
/// Go counts bytes only, hyper's and Apache's default is 100. The parser sets aside room for
/// this many lines for every request it parses (on the stack; hyper's was on the heap, and
/// at 10,000 lines cost 640 KiB per request and about 8 % of mpp's CPU under load).
pub const MAX_HEADERS: usize = 256;

/// Writes a request head for `method` and `target` (origin form, in pieces written one after
/// another) into `out`, with `headers` and, unless they name one, `host`; then `added`, and
/// the body's length. The headers' own
/// `Content-Length` and `Transfer-Encoding` are left out: the body is sent whole, with its
/// length (`0` too, for the methods that carry a body).
pub fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &[&str],
    headers: &HeaderMap,
    added: &[(HeaderName, HeaderValue)],
    host: &HeaderValue,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    for piece in target {
        out.extend_from_slice(piece.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // A look at each name rather than a hashed lookup: the request path's headers never
    // name the host (the client's `Host` became `X-Forwarded-Host`).
    if !headers.keys().any(|name| name == header::HOST) {
        header_line(out, b"host", host.as_bytes());
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in added {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        let mut digits = [0; 20];
        header_line(out, b"content-length", format_u64(body_len as u64, &mut digits));
    }
    out.extend_from_slice(b"\r\n");
}

/// A request head, parsed.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and headers.
    pub parts: http::request::Parts,
    /// How its body is delimited.
    pub decoder: Decoder,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
}

/// A request head that cannot be served, and the answer it gets.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is over {0} bytes (--max-header-bytes)")]
    TooLarge(usize),
    #[error("too many request heads are arriving at once; try again")]
    OverBudget,
    #[error("the request target is over {MAX_TARGET} bytes")]
    TargetTooLong,
    #[error("the request head has more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("the request head is malformed: {0}")]
    Malformed(httparse::Error),
    #[error("the request head is malformed: {0}")]
    Invalid(&'static str),
}

impl HeadError {
    /// The status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge(_) | HeadError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::OverBudget => StatusCode::SERVICE_UNAVAILABLE,
            HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) | HeadError::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the request head at the front of `buf`: `None` while it is incomplete. A complete
/// head is taken off `buf`; what follows it stays.
pub fn parse_request(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed(e)),
    };
    if len > max {
        // The last read may have brought the rest of a head over the limit.
        return Err(HeadError::TooLarge(max));
    }
    let method = request.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Invalid("the method is not a token"))?;
    let version = if request.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // httparse's slices point into `buf`; where they lie is taken, then `buf`'s head frozen,
    // so that the target and every header value are slices of it rather than copies.
    let base = buf.as_ptr() as usize;
    let within = |s: &[u8]| {
        let start = (s.as_ptr() as usize).checked_sub(base).filter(|start| start + s.len() <= len);
        start.map(|start| start..start + s.len()).ok_or(HeadError::Malformed(httparse::Error::Token))
    };
    let target = within(request.path.unwrap_or_default().as_bytes())?;
    if target.len() > MAX_TARGET {
        return Err(HeadError::TargetTooLong);
    }
    let mut names = Vec::with_capacity(request.headers.len());
    // Which of the headers that frame the request are there: most requests carry none, and
    // looking each up in the map costs a hash.
    let mut present = FramingHeaders::default();
    for h in request.headers.iter() {
        let name = header_name(h.name.as_bytes()).map_err(|_| HeadError::Invalid("a header name"))?;
        present.note(&name);
        names.push((name, within(h.value)?));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| HeadError::Invalid("the request target"))?;
    // Room for what the proxy adds to the map (credentials), so that it is not grown, and
    // rehashed, on the way to the replica (its forwarding headers go beside the map).
    let mut headers = HeaderMap::with_capacity(names.len() + 1);
    for (name, value) in names {
        // httparse has checked the value's bytes (no CR, LF or other controls but tab).
        let value =
            HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| HeadError::Invalid("a header value"))?;
        headers.append(name, value);
    }
    let mut keep_alive = keep_alive(version, &headers, &present);
    let chunked = if present.transfer_encoding {
        headers.get_all(header::TRANSFER_ENCODING).iter().next_back().map(|last| ends_in_chunked(last.as_bytes()))
    } else {
        None
    };
    let decoder = if let Some(chunked) = chunked {
        if version == Version::HTTP_10 {
            return Err(HeadError::Invalid("HTTP/1.0 with a Transfer-Encoding"));
        }
        if !chunked {
            return Err(HeadError::Invalid("the Transfer-Encoding does not end in chunked"));
        }
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            // RFC 9112 section 6.3: chunked wins; whatever follows the body is not trusted.
            keep_alive = false;
        }
        Decoder::new(Framing::Chunked)
    } else if !present.content_length {
        Decoder::new(Framing::Length(0))
    } else {
        match content_length(&headers) {
            Ok(length) => Decoder::new(Framing::Length(length.unwrap_or(0))),
            Err(_) => {
                return Err(HeadError::Invalid("the Content-Length is invalid or given twice with different values"));
            }
        }
    };
    let expects_continue = version == Version::HTTP_11
        && present.expect
        && headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead { parts, decoder, keep_alive, expects_continue }))
}

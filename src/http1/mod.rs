//! HTTP/1.1 on the wire, both ways, for mpp's own listener ([`crate::server::http1`]) and
//! its own client ([`crate::client::pool`]): the framing and header rules of RFC 9112 they
//! share (this file), request heads ([`request`]: the client writes them, the listener
//! parses them), answer heads ([`response`]: the listener writes them, the client parses
//! them) and the body decoder ([`body`]). Pure functions over buffers, parsed with
//! `httparse` (header values slices of the bytes read, not copies): the callers do the
//! reading and writing.

use http::header::{self, HeaderName};
use http::{HeaderMap, Version};

pub mod body;
pub mod request;
pub mod response;

pub use body::{Decoded, Decoder};

/// A message that does not speak HTTP/1.1 as it should.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the answer's head is over {} bytes", response::MAX_HEAD_BYTES)]
    HeadTooLarge,
    #[error("the answer's head is malformed: {0}")]
    Malformed(httparse::Error),
    #[error("the answer's head has an invalid header {0:?}")]
    InvalidHeader(String),
    #[error("the answer is HTTP/1.0 with a Transfer-Encoding")]
    TransferEncodingInHttp10,
    #[error("the answer switches protocols, which a proxied request never asks for")]
    SwitchingProtocols,
    #[error("the answer's Content-Length is invalid or given twice with different values")]
    InvalidContentLength,
    #[error("the answer's chunked body is malformed: {0}")]
    InvalidChunk(&'static str),
    #[error("the connection closed before the answer was complete")]
    Incomplete,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` request, `204`, `304`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the sender closes the connection.
    UntilClose,
}

/// Whether the last coding `Transfer-Encoding` names is `chunked`; `None` without one.
pub fn ends_in_chunked(headers: &HeaderMap) -> Option<bool> {
    let last = headers.get_all(header::TRANSFER_ENCODING).iter().next_back()?;
    Some(
        last.to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked")),
    )
}

/// The length `headers` give in `Content-Length` (every value, and every item of a list,
/// the same number), if any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProtocolError> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| ProtocolError::InvalidContentLength)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ProtocolError::InvalidContentLength);
            }
            let n: u64 = part.parse().map_err(|_| ProtocolError::InvalidContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(ProtocolError::InvalidContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the connection stays open after this answer: HTTP/1.1 unless it says `close`,
/// HTTP/1.0 only if it says `keep-alive`; and never after an answer with both
/// `Transfer-Encoding` and `Content-Length` (RFC 9112 section 6.3). `present` says which
/// of those headers the message has; the map is looked at only for those it has.
pub fn keep_alive(version: Version, headers: &HeaderMap, present: &FramingHeaders) -> bool {
    if present.transfer_encoding && present.content_length {
        return false;
    }
    let says = |token| present.connection && connection_says(headers, token);
    if version == Version::HTTP_10 { says("keep-alive") } else { !says("close") }
}

/// Which of the headers that frame a message (and, for a request, `Expect`) its head
/// carries, noted while the head is parsed: most messages lack most of them, and looking
/// for one in the map costs a hash.
#[derive(Debug, Default, Clone, Copy)]
pub struct FramingHeaders {
    pub connection: bool,
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub expect: bool,
}

impl FramingHeaders {
    /// Notes `name`, one of the head's header names.
    pub fn note(&mut self, name: &HeaderName) {
        // Standard names compare as integers.
        if *name == header::CONNECTION {
            self.connection = true;
        } else if *name == header::TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if *name == header::CONTENT_LENGTH {
            self.content_length = true;
        } else if *name == header::EXPECT {
            self.expect = true;
        }
    }
}

/// Whether `Connection` names `token`.
pub fn connection_says(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Writes one `name: value` header line.
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests;

//! HTTP/1.1 on the wire, both ways, for mpp's own listener ([`crate::server::http1`]) and
//! its own client ([`crate::client::pool`]): the framing and header rules of RFC 9112 they
//! share (this file), request heads ([`request`]: the client writes them, the listener
//! parses them), answer heads ([`response`]: the listener writes them, the client parses
//! them), an answer's header lines kept as bytes on their way through ([`lines`]) and the
//! body decoder ([`body`]). Pure functions over buffers, parsed with
//! `httparse` (header values slices of the bytes read, not copies): the callers do the
//! reading and writing.

use http::header::{self, HeaderName};
use http::{HeaderMap, Version};

pub mod body;
pub mod lines;
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

/// Whether the last coding a `Transfer-Encoding` line names is `chunked`.
pub fn ends_in_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    same_name(last.trim_ascii(), b"chunked")
}

/// The length `headers` give in `Content-Length` (every value, and every item of a list,
/// the same number), if any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProtocolError> {
    let mut length = Length::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        length.note(value.as_bytes());
    }
    length.get()
}

/// A message's `Content-Length`, gathered from each of its lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct Length {
    length: Option<u64>,
    invalid: bool,
}

impl Length {
    /// Notes one `Content-Length` line: a number, or a list of the same number.
    pub fn note(&mut self, value: &[u8]) {
        // The usual line is one number: read as it is, not split and trimmed.
        if let Some(n) = decimal(value) {
            self.add(n);
            return;
        }
        for part in value.split(|&b| b == b',') {
            match decimal(part.trim_ascii()) {
                Some(n) => self.add(n),
                None => self.invalid = true,
            }
        }
    }

    /// Notes a length read already.
    pub fn note_number(&mut self, n: u64) {
        self.add(n);
    }

    fn add(&mut self, n: u64) {
        self.invalid |= self.length.is_some_and(|l| l != n);
        self.length = Some(n);
    }

    /// Whether the message has a `Content-Length` line.
    pub fn given(&self) -> bool {
        self.length.is_some() || self.invalid
    }

    /// The length, if one was given and every line agrees.
    pub fn get(&self) -> Result<Option<u64>, ProtocolError> {
        if self.invalid { Err(ProtocolError::InvalidContentLength) } else { Ok(self.length) }
    }
}

/// `digits` read as a decimal number; `None` unless it is one (no sign, no space) that fits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 { None } else { n.checked_mul(10)?.checked_add(u64::from(digit)) }
    })
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

/// What a header's name means to the one who reads the head, told from its bytes before any
/// [`HeaderName`] is made: the headers that frame the message or belong to the connection are
/// the reader's, the rest travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Another hop-by-hop header (RFC 9110 section 7.6.1: `Keep-Alive`, `TE`, `Trailer`,
    /// `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`, and old clients'
    /// `Proxy-Connection`).
    HopByHop,
    /// Any other header.
    Plain,
}

impl Role {
    /// The role of the header named `raw` (a token, as httparse checked it).
    pub fn of(raw: &[u8]) -> Role {
        // Told apart by length first: most names have no other of their length here.
        match raw.len() {
            2 if same_name(raw, b"te") => Role::HopByHop,
            7 if same_name(raw, b"trailer") || same_name(raw, b"upgrade") => Role::HopByHop,
            10 if same_name(raw, b"connection") => Role::Connection,
            10 if same_name(raw, b"keep-alive") => Role::HopByHop,
            14 if same_name(raw, b"content-length") => Role::ContentLength,
            16 if same_name(raw, b"proxy-connection") => Role::HopByHop,
            17 if same_name(raw, b"transfer-encoding") => Role::TransferEncoding,
            18 if same_name(raw, b"proxy-authenticate") => Role::HopByHop,
            19 if same_name(raw, b"proxy-authorization") => Role::HopByHop,
            _ => Role::Plain,
        }
    }

    /// Whether a header of this role belongs to the connection rather than the message.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(self, Role::Connection | Role::TransferEncoding | Role::HopByHop)
    }
}

/// The name `raw` (a token, as httparse checked it), made without a hash or a copy for the
/// names Prometheus's answers and its clients' requests carry most, and by
/// [`HeaderName::from_bytes`] otherwise (which lowercases every name into a buffer first:
/// about 110 instructions a header in the profile).
pub fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    let common = match raw.len() {
        4 if same_name(raw, b"date") => Some(header::DATE),
        4 if same_name(raw, b"host") => Some(header::HOST),
        4 if same_name(raw, b"vary") => Some(header::VARY),
        6 if same_name(raw, b"accept") => Some(header::ACCEPT),
        6 if same_name(raw, b"server") => Some(header::SERVER),
        6 if same_name(raw, b"cookie") => Some(header::COOKIE),
        10 if same_name(raw, b"user-agent") => Some(header::USER_AGENT),
        12 if same_name(raw, b"content-type") => Some(header::CONTENT_TYPE),
        13 if same_name(raw, b"authorization") => Some(header::AUTHORIZATION),
        14 if same_name(raw, b"content-length") => Some(header::CONTENT_LENGTH),
        15 if same_name(raw, b"accept-encoding") => Some(header::ACCEPT_ENCODING),
        16 if same_name(raw, b"content-encoding") => Some(header::CONTENT_ENCODING),
        _ => None,
    };
    match common {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(raw),
    }
}

/// Whether the token `raw` is `lower` in any case. Setting bit 5 of each byte lowercases a
/// letter and leaves the digits and `-` as they are; the other token characters it would
/// change (`^`, `_`) are in none of the names compared here. Eight bytes at a time.
pub(crate) fn same_name(raw: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    debug_assert!(
        lower.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "names compared are lowercase letters, digits and '-'"
    );
    if raw.len() != lower.len() {
        return false;
    }
    let (mut raw_words, mut lower_words) = (raw.chunks_exact(8), lower.chunks_exact(8));
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("chunks of eight bytes"));
    let mut differ = 0;
    for (r, l) in raw_words.by_ref().zip(lower_words.by_ref()) {
        differ |= (word(r) | CASE) ^ word(l);
    }
    for (r, l) in raw_words.remainder().iter().zip(lower_words.remainder()) {
        differ |= u64::from((r | 0x20) ^ l);
    }
    differ == 0
}

/// What a message's `Connection` lines say, read from their bytes.
#[derive(Debug, Default)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    /// The other options it names: headers of those names belong to the connection too.
    pub named: Vec<HeaderName>,
}

impl ConnectionOptions {
    /// Notes the options of one `Connection` line.
    pub fn note(&mut self, value: &[u8]) {
        // The usual line is one option: no split, no trim.
        if same_name(value, b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        for option in value.split(|&b| b == b',') {
            let option = option.trim_ascii();
            if same_name(option, b"keep-alive") {
                self.keep_alive = true;
                continue;
            }
            if same_name(option, b"close") {
                self.close = true;
            }
            // A field named like the option (`Close: x` too) goes, as RFC 9110 section 7.6.1
            // requires.
            if let Ok(name) = HeaderName::from_bytes(option) {
                self.named.push(name);
            }
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
    // Room made once for the line's four pieces.
    out.reserve(name.len() + value.len() + 4);
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

//! HTTP/1.1 on the wire for the request path's own client ([`super::pool`]): a request head
//! written in one piece, an answer's head parsed with `httparse` (its header values slices of
//! the bytes read, not copies), and the answer's body framed as RFC 9112 section 6.3 says:
//! no body, `Content-Length`, `chunked`, or up to the close. Pure functions over buffers:
//! the pool does the reading and writing.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version};

/// The largest answer head (status line and headers) taken: hyper's client limit (a
/// Prometheus answer's head is a few hundred bytes). A head is parsed again from its start
/// after each read, so this also bounds that work.
pub const MAX_HEAD_BYTES: usize = 400 * 1024;
/// The most header lines in an answer head (hyper's client limit).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions), the most extension bytes in one body, and
/// the most trailer bytes taken (hyper's client limits for the last two).
const MAX_CHUNK_LINE: usize = 4096;
const MAX_EXTENSION_BYTES: usize = 16 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// An answer that does not speak HTTP/1.1 as it should.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the answer's head is over {MAX_HEAD_BYTES} bytes")]
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

/// Writes a request head for `method` and `target` (origin form, in pieces written one after
/// another) into `out`, with `headers` and, unless they name one, `host`; then the body's
/// length. The headers' own
/// `Content-Length` and `Transfer-Encoding` are left out: the body is sent whole, with its
/// length (`0` too, for the methods that carry a body).
pub fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &[&str],
    headers: &HeaderMap,
    host: &HeaderValue,
    body_len: usize,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    for piece in target {
        out.extend_from_slice(piece.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        header_line(out, b"host", host.as_bytes());
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        let mut digits = [0; 20];
        header_line(out, b"content-length", format_usize(body_len, &mut digits));
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one `name: value` header line (shared with the listener's answers).
pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `buf`.
fn format_usize(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
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

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` request, `204`, `304`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the replica closes the connection.
    UntilClose,
}

/// An answer's head, parsed.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers (with no body yet).
    pub response: Response<()>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// Parses the answer's head at the front of `buf`, for a request made with `method`: `None`
/// while it is incomplete. A complete head is taken off `buf` (interim `1xx` answers before
/// it are skipped); what follows it stays.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, ProtocolError> {
    loop {
        let Some(Parsed { len, status, version, names, present }) = parse_one(buf)? else {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(ProtocolError::HeadTooLarge);
            }
            return Ok(None);
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtocolError::SwitchingProtocols);
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let head = buf.split_to(len).freeze();
        // Room for what the proxy adds (`MPP.ServedBy`, the web config's headers).
        let mut headers = HeaderMap::with_capacity(names.len() + 2);
        for (name, start, end) in names {
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| ProtocolError::InvalidHeader(name.as_str().to_owned()))?;
            headers.append(name, value);
        }
        if version == Version::HTTP_10 && present.transfer_encoding {
            // RFC 9112 section 6.1: an HTTP/1.0 message's framing cannot be trusted then.
            return Err(ProtocolError::TransferEncodingInHttp10);
        }
        let framing = framing(method, status, &headers, &present)?;
        let keep_alive = keep_alive(version, &headers, &present) && framing != Framing::UntilClose;
        if framing == Framing::Chunked {
            // RFC 9112 section 6.3: the chunked framing wins, and a length beside it must not
            // travel on (the listener would frame the answer by it).
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head { response, framing, keep_alive }));
    }
}

/// One head at the front of a buffer: its length, status, version, and each header's name
/// with where its value lies in the head.
struct Parsed {
    len: usize,
    status: StatusCode,
    version: Version,
    names: Vec<(HeaderName, usize, usize)>,
    /// Which of the framing headers are among them.
    present: FramingHeaders,
}

fn parse_one(buf: &BytesMut) -> Result<Option<Parsed>, ProtocolError> {
    let mut config = httparse::ParserConfig::default();
    // As hyper's client was set up: answers with spaces before the colon are taken.
    config.allow_spaces_after_header_name_in_responses(true);
    // Left uninitialised: httparse writes the headers it finds (setting up 100 empty ones
    // for every answer showed in the profile).
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    match config.parse_response_with_uninit_headers(&mut response, buf, &mut slots) {
        Ok(status) => located(buf, status, &response),
        Err(e) => Err(ProtocolError::Malformed(e)),
    }
}

fn located(
    buf: &[u8],
    status: httparse::Status<usize>,
    response: &httparse::Response<'_, '_>,
) -> Result<Option<Parsed>, ProtocolError> {
    let httparse::Status::Complete(len) = status else { return Ok(None) };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Malformed(httparse::Error::Status))?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let base = buf.as_ptr() as usize;
    let mut names = Vec::with_capacity(response.headers.len());
    let mut present = FramingHeaders::default();
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ProtocolError::InvalidHeader(h.name.chars().take(64).collect()))?;
        present.note(&name);
        // httparse's values are slices of `buf`; anything else is refused, not trusted.
        let start = (h.value.as_ptr() as usize).checked_sub(base).filter(|s| s + h.value.len() <= buf.len());
        let Some(start) = start else { return Err(ProtocolError::Malformed(httparse::Error::HeaderValue)) };
        names.push((name, start, start + h.value.len()));
    }
    Ok(Some(Parsed { len, status, version, names, present }))
}

/// How the body of an answer with `status` and `headers` to a `method` request is
/// delimited (RFC 9112 section 6.3).
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
    present: &FramingHeaders,
) -> Result<Framing, ProtocolError> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let chunked = if present.transfer_encoding { ends_in_chunked(headers) } else { None };
    if let Some(chunked) = chunked {
        return Ok(if chunked { Framing::Chunked } else { Framing::UntilClose });
    }
    let length = if present.content_length { content_length(headers)? } else { None };
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Whether the last coding `Transfer-Encoding` names is `chunked`; `None` without one.
/// Shared with the listener.
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
/// the same number), if any. Shared with the listener ([`crate::server::http1`]).
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
/// for one in the map costs a hash. Shared with the listener.
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

/// Whether `Connection` names `token` (shared with the listener).
pub fn connection_says(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What decoding found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// More must be read first.
    NeedMore,
    /// The body is complete.
    End,
}

/// Where a body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Everything until the close.
    UntilClose,
    /// A chunked body, at `Chunk`, with this many bytes of chunk extensions read so far.
    Chunked(Chunk, usize),
    /// Complete.
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes to come.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// In the trailer section, having read this many bytes of it.
    Trailers(usize),
}

impl Decoder {
    /// The decoder for `framing`.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size, 0),
            Framing::UntilClose => Decoder::UntilClose,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The body bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next body bytes (or the framing around them) off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                Decoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Decoder::Chunked(chunk, extensions) => match *chunk {
                    Chunk::Size => {
                        let Some(line) = take_line(buf, MAX_CHUNK_LINE, "a chunk-size line is too long")? else {
                            return Ok(Decoded::NeedMore);
                        };
                        let (size, extension) = chunk_size(&line)?;
                        *extensions += extension;
                        if *extensions > MAX_EXTENSION_BYTES {
                            return Err(ProtocolError::InvalidChunk("the chunk extensions are too long"));
                        }
                        *chunk = if size == 0 { Chunk::Trailers(0) } else { Chunk::Data(size) };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let n = left.min(buf.len() as u64) as usize;
                        *chunk = if left == n as u64 { Chunk::DataEnd } else { Chunk::Data(left - n as u64) };
                        return Ok(Decoded::Data(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        let Some(line) = take_line(buf, 2, "a chunk's data runs past its size")? else {
                            return Ok(Decoded::NeedMore);
                        };
                        if !line.is_empty() {
                            return Err(ProtocolError::InvalidChunk("a chunk's data runs past its size"));
                        }
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers(read) => {
                        let limit = MAX_TRAILER_BYTES.saturating_sub(read);
                        let Some(line) = take_line(buf, limit, "the trailers are too long")? else {
                            return Ok(Decoded::NeedMore);
                        };
                        if line.is_empty() {
                            *self = Decoder::Done;
                        } else {
                            *chunk = Chunk::Trailers(read + line.len() + 2);
                        }
                    }
                },
            }
        }
    }
}

/// The line at the front of `buf` without its `\r\n`, taken off `buf`; `None` while no line
/// end has arrived. A line longer than `limit`, or ending in a bare `\n`, is an error.
fn take_line(buf: &mut BytesMut, limit: usize, what: &'static str) -> Result<Option<Bytes>, ProtocolError> {
    let Some(end) = buf.iter().take(limit + 1).position(|&b| b == b'\n') else {
        return if buf.len() > limit { Err(ProtocolError::InvalidChunk(what)) } else { Ok(None) };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ProtocolError::InvalidChunk("a line of the chunked body does not end in CRLF"));
    }
    if buf[..end - 1].contains(&b'\r') {
        // A bare CR that another parser might take for a line end (chunk smuggling).
        return Err(ProtocolError::InvalidChunk("a line of the chunked body has a bare CR"));
    }
    let mut line = buf.split_to(end + 1).freeze();
    line.truncate(end - 1);
    Ok(Some(line))
}

/// A chunk-size line's size (hexadecimal, before any `;` extension), and how many bytes of
/// extension the line has.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), ProtocolError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let extension = line.len() - digits.len();
    // Whitespace may come before an extension (RFC 9112 section 7.1.1), not before the size.
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(ProtocolError::InvalidChunk("a chunk size is not a hexadecimal number"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| ProtocolError::InvalidChunk("a chunk size is not ASCII"))?;
    let size = u64::from_str_radix(text, 16).map_err(|_| ProtocolError::InvalidChunk("a chunk size is too large"))?;
    Ok((size, extension))
}

#[cfg(test)]
mod tests;

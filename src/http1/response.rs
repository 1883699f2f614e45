//! Answer heads: parsed by the request path's client ([`parse_head`], interim answers
//! skipped, the body's framing decided as RFC 9112 section 6.3 says), and written by the
//! listener ([`write_head`], the framing chosen from the answer and what the client
//! speaks; [`Encoder`] frames the body that follows).

use std::io::Write as _;

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Response, StatusCode, Version};

use super::lines::HeaderLines;
use super::{
    ConnectionOptions, Framing, Length, ProtocolError, Role, connection_says, ends_in_chunked, header_line, same_name,
};

/// The largest answer head (status line and headers) taken: hyper's client limit (a
/// Prometheus answer's head is a few hundred bytes). A head is parsed again from its start
/// after each read, so this also bounds that work.
pub const MAX_HEAD_BYTES: usize = 400 * 1024;
/// The most header lines in an answer head (hyper's client limit).
pub const MAX_HEADERS: usize = 100;

/// An answer's head, parsed.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers (with no body yet). The headers that belong to the
    /// connection (RFC 9110 section 7.6.1: `Connection`, those it names, `Transfer-Encoding`
    /// and the other hop-by-hop headers) are the client's, and left out. The others are in
    /// its map, or in `lines`.
    pub response: Response<()>,
    /// The headers that travel on, kept as the bytes they came in, when [`parse_head_as`]
    /// was asked to and could.
    pub lines: Option<HeaderLines>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// Parses the answer's head at the front of `buf`, for a request made with `method`: `None`
/// while it is incomplete. A complete head is taken off `buf` (interim `1xx` answers before
/// it are skipped); what follows it stays.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, ProtocolError> {
    parse_head_as(buf, method, false)
}

/// [`parse_head`], with the headers that travel on kept as the bytes they came in
/// ([`HeaderLines`]) when `keep_lines` and the answer is one mpp's listener can write so:
/// one with a body, and with no header of a name mpp sets on answers (`MPP...`: another
/// mpp's answer), which mpp's own must replace.
pub fn parse_head_as(buf: &mut BytesMut, method: &Method, keep_lines: bool) -> Result<Option<Head>, ProtocolError> {
    loop {
        let Some(parsed) = parse_one(buf)? else {
            if buf.len() > MAX_HEAD_BYTES {
                return Err(ProtocolError::HeadTooLarge);
            }
            return Ok(None);
        };
        let Parsed {
            len,
            status,
            version,
            lines,
            coded,
            dated,
            ours,
            connection,
            transfer_encoding,
            length,
            kept_length,
        } = parsed;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtocolError::SwitchingProtocols);
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        if version == Version::HTTP_10 && transfer_encoding.is_some() {
            // RFC 9112 section 6.1: an HTTP/1.0 message's framing cannot be trusted then.
            return Err(ProtocolError::TransferEncodingInHttp10);
        }
        let framing = framing(method, status, transfer_encoding, &length)?;
        let (close, keep) = connection.as_ref().map_or((false, false), |c| (c.close, c.keep_alive));
        let keep_alive =
            !coded && if version == Version::HTTP_10 { keep } else { !close } && framing != Framing::UntilClose;
        let head = buf.split_to(len).freeze();
        let bytes = match lines {
            Lines::None => Bytes::new(),
            Lines::Run(run) => head.slice(run),
            Lines::Copied(copy) => Bytes::from(copy),
        };
        // The length the lines that travel on give (none when a Transfer-Encoding left it
        // out, or `Connection` named it): the listener frames by it without a line of its own.
        let lines = HeaderLines::new(bytes, kept_length.get()?, dated);
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let lines = if keep_lines && !ours && !bodiless {
            Some(lines)
        } else {
            lines.append_to(response.headers_mut());
            None
        };
        return Ok(Some(Head { response, lines, framing, keep_alive }));
    }
}

/// One head at the front of a buffer: its length, status, version, and the header lines
/// that travel on; with what the headers that are the connection's said, read as they were
/// parsed.
struct Parsed {
    len: usize,
    status: StatusCode,
    version: Version,
    lines: Lines,
    /// Whether it has a Transfer-Encoding beside a length: the connection is not reused
    /// after it, and the length does not travel on (RFC 9112 section 6.3: the listener
    /// would frame the answer by it).
    coded: bool,
    /// Whether a line that travels on is a `Date`.
    dated: bool,
    /// Whether a line that travels on has a name mpp sets on answers.
    ours: bool,
    /// What its `Connection` lines say, if it has any.
    connection: Option<ConnectionOptions>,
    /// Whether its last `Transfer-Encoding` ends in `chunked`, if it has one.
    transfer_encoding: Option<bool>,
    /// What its `Content-Length` lines say, which frames its body.
    length: Length,
    /// What the `Content-Length` lines that travel on say.
    kept_length: Length,
}

/// Where a head's lines that travel on are.
enum Lines {
    None,
    /// One run of well-formed lines of the head (the usual answer: only the connection's
    /// headers, if any, at either end left out).
    Run(Range<usize>),
    /// Copied, one line at a time, as `name: value` lines: lines left out between them, or
    /// lines with a space before the colon or after the value.
    Copied(Vec<u8>),
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
    let mut parsed = Parsed {
        len,
        status,
        version,
        lines: Lines::None,
        coded: false,
        dated: false,
        ours: false,
        connection: None,
        transfer_encoding: None,
        length: Length::default(),
        kept_length: Length::default(),
    };
    // The run of well-formed lines that travel on so far, while they are one.
    let mut run: Option<Range<usize>> = None;
    let mut scattered = false;
    for h in response.headers.iter() {
        let raw = h.name.as_bytes();
        match Role::of(raw) {
            Role::Connection => parsed.connection.get_or_insert_default().note(h.value),
            Role::TransferEncoding => parsed.transfer_encoding = Some(ends_in_chunked(h.value)),
            Role::HopByHop => {}
            role => {
                if role == Role::ContentLength {
                    parsed.length.note(h.value);
                } else if raw.len() == 4 && same_name(raw, b"date") {
                    parsed.dated = true;
                }
                if raw.len() > usize::from(u16::MAX) {
                    // Longer than a `HeaderName` can be.
                    return Err(ProtocolError::InvalidHeader(h.name.chars().take(64).collect()));
                }
                parsed.ours |= raw.len() >= 3 && same_name(&raw[..3], b"mpp");
                let line = well_formed(buf, raw, h.value);
                match (&mut run, line) {
                    (None, Some(line)) if !scattered => run = Some(line),
                    (Some(run), Some(line)) if run.end == line.start => run.end = line.end,
                    _ => scattered = true,
                }
            }
        }
    }
    parsed.coded = parsed.transfer_encoding.is_some() && parsed.length.given();
    let named = parsed.connection.as_ref().is_some_and(|c| !c.named.is_empty());
    parsed.kept_length = parsed.length;
    parsed.lines = if scattered || named || parsed.coded {
        copied(response, &mut parsed)
    } else {
        run.map_or(Lines::None, Lines::Run)
    };
    Ok(Some(parsed))
}

/// Where the header line of `name` and `value` (slices of `buf`, as httparse gives them)
/// lies in `buf`, CRLF included, if it is `name:`, blanks, `value`, CRLF: what mpp's
/// listener may write as it is.
fn well_formed(buf: &[u8], name: &[u8], value: &[u8]) -> Option<Range<usize>> {
    let base = buf.as_ptr() as usize;
    let start = (name.as_ptr() as usize).checked_sub(base)?;
    let value_start = (value.as_ptr() as usize).checked_sub(base)?;
    let end = value_start + value.len();
    let colon = start + name.len();
    (!value.is_empty() && buf.get(colon) == Some(&b':') && buf.get(end..end + 2) == Some(&b"\r\n"[..]))
        .then_some(start..end + 2)
}

/// The lines of `response` that travel on, copied as `name: value` lines; their length and
/// whether one of them is a `Date` noted again (`Connection` may name either, and a length
/// beside a Transfer-Encoding stays behind).
fn copied(response: &httparse::Response<'_, '_>, parsed: &mut Parsed) -> Lines {
    let named = parsed.connection.as_ref().map_or(&[][..], |c| &c.named[..]);
    let mut copy = Vec::new();
    parsed.dated = false;
    parsed.kept_length = Length::default();
    for h in response.headers.iter() {
        let raw = h.name.as_bytes();
        let role = Role::of(raw);
        // What `Connection` names is the connection's (RFC 9110 section 7.6.1).
        let gone = role.is_hop_by_hop()
            || parsed.coded && role == Role::ContentLength
            || named.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(raw));
        if !gone {
            parsed.dated |= raw.len() == 4 && same_name(raw, b"date");
            if role == Role::ContentLength {
                parsed.kept_length.note(h.value);
            }
            header_line(&mut copy, raw, h.value);
        }
    }
    Lines::Copied(copy)
}

/// How the body of an answer with `status` to a `method` request is delimited (RFC 9112
/// section 6.3), by its `Transfer-Encoding` (whether it ends in `chunked`) and its length.
fn framing(
    method: &Method,
    status: StatusCode,
    transfer_encoding: Option<bool>,
    length: &Length,
) -> Result<Framing, ProtocolError> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = transfer_encoding {
        return Ok(if chunked { Framing::Chunked } else { Framing::UntilClose });
    }
    Ok(length.get()?.map_or(Framing::UntilClose, Framing::Length))
}

/// How an answer goes out, decided by [`write_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// How its body is framed ([`Framing::Empty`]: no body is written).
    pub framing: Framing,
    /// Whether the connection may carry another request after it.
    pub keep_alive: bool,
}

/// Writes the head of the answer `parts` (with the replica's `lines` kept as bytes before
/// its map's, if any) to a request of `version` (a `HEAD` request when `answer_head`) into
/// `out`; `exact` is the body's size when known. The framing is this
/// writer's to say: the answer's own `Content-Length` is kept (and its body held to it),
/// else the exact size is given, else HTTP/1.1 clients get `chunked` and HTTP/1.0 clients
/// the body up to the close; `Transfer-Encoding` and `Connection` are dropped and written
/// as the framing and `keep_alive` (false also when the answer says `close`) need, and so is
/// a `Content-Length` that is not one number. A `1xx`, `204` or `304` has no body, and a
/// `204` or `1xx` no length (RFC 9110 section 8.6).
pub fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    lines: Option<&HeaderLines>,
    exact: Option<u64>,
    answer_head: bool,
    version: Version,
    keep_alive: bool,
) -> Plan {
    let status = parts.status;
    // The replica's lines kept as they came (if they were) go first: never a `Connection`,
    // and their length and `Date` noted when they were parsed.
    // The headers this writer reads, found in one look at each name (standard names compare
    // as integers) rather than three hashed lookups of names most answers lack.
    let (mut connection, mut length, mut dated) = (false, Length::default(), false);
    if let Some(lines) = lines {
        if let Some(n) = lines.length() {
            length.note_number(n);
        }
        dated = lines.dated();
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            // Whatever changes an answer's length puts its lines in the map first: a length
            // beside kept lines would frame it twice.
            debug_assert!(lines.is_none(), "a Content-Length in the map of an answer with kept lines");
            length.note(value.as_bytes());
        } else if name == header::CONNECTION {
            connection = true;
        } else if name == header::DATE {
            dated = true;
        }
    }
    let mut keep_alive = keep_alive && !(connection && connection_says(&parts.headers, "close"));
    let no_body = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // A length that cannot be read is not passed on (the client could not frame by it).
    let length = length.get();
    let lengthless = length.is_err() || (no_body && status != StatusCode::NOT_MODIFIED);
    status_line(out, status, version);
    if let Some(lines) = lines {
        // Only answers with a body keep their lines: none has a length to drop.
        out.extend_from_slice(lines.as_bytes());
        out.extend_from_slice(lines.added());
    }
    for (name, value) in &parts.headers {
        let ours = name == header::TRANSFER_ENCODING || name == header::CONNECTION;
        let dropped = lengthless && name == header::CONTENT_LENGTH;
        if !ours && !dropped {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let declared = if no_body { None } else { length.ok().flatten() };
    let framing = if no_body {
        Framing::Empty
    } else if let Some(length) = declared {
        Framing::Length(length)
    } else if let Some(length) = exact.filter(|&n| !answer_head || n > 0) {
        let mut digits = [0; 20];
        header_line(out, b"content-length", super::format_u64(length, &mut digits));
        Framing::Length(length)
    } else if answer_head {
        Framing::Empty
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !dated {
        date_line(out);
    }
    out.extend_from_slice(b"\r\n");
    Plan { framing: if answer_head { Framing::Empty } else { framing }, keep_alive }
}

/// An answer's body as it is written: each piece framed as the [`Plan`] says, and held to
/// its `Content-Length`.
#[derive(Debug)]
pub struct Encoder {
    framing: Framing,
    sent: u64,
}

/// An answer's body that does not match its own `Content-Length`.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the answer's body is longer than its Content-Length of {0}")]
    TooLong(u64),
    #[error("the answer's body ended after {sent} of its {length} bytes")]
    TooShort { sent: u64, length: u64 },
}

impl Encoder {
    /// The encoder of a body framed by `framing`.
    pub fn new(framing: Framing) -> Self {
        Encoder { framing, sent: 0 }
    }

    /// Writes into `out` what goes before the next `len` bytes of body, and returns what
    /// goes after them.
    pub fn piece(&mut self, out: &mut Vec<u8>, len: usize) -> Result<&'static [u8], EncodeError> {
        if let Framing::Length(length) = self.framing
            && self.sent + len as u64 > length
        {
            return Err(EncodeError::TooLong(length));
        }
        self.sent += len as u64;
        if self.framing == Framing::Chunked && len > 0 {
            let _ = write!(out, "{len:x}\r\n");
            return Ok(b"\r\n");
        }
        Ok(b"")
    }

    /// Writes into `out` what ends the body.
    pub fn finish(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self.framing {
            Framing::Length(length) if self.sent != length => Err(EncodeError::TooShort { sent: self.sent, length }),
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The status line, in the version of the request (HTTP/1.0 clients get `HTTP/1.0`).
pub fn status_line(out: &mut Vec<u8>, status: StatusCode, version: Version) {
    out.extend_from_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: ...`, formatted once a second per thread.
pub fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        header_line(out, b"date", text.as_bytes());
    });
}

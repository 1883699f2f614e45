//! A replica's header lines kept as the bytes they came in ([`HeaderLines`]), for the answer
//! relayed whole to an HTTP/1.1 client: nothing on that path reads the replica's headers,
//! so they go from one socket to the other with one copy, where a map would have each
//! name made, hashed, inserted, looked at again when written, and dropped (about a tenth of
//! a request's instructions). The answer's body carries them ([`CarriesLines`]); whatever
//! reads or changes an answer's headers puts them in its map first ([`unpack`]).

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};

use super::header_name;

/// The header lines of a replica's answer that travel on to the client, as they came:
/// `name: value` lines (the name in the replica's case), each ending in CRLF, none of them
/// one that belongs to the connection, each checked by httparse (a token for a name, the
/// bytes a [`HeaderValue`] takes for a value). An answer's body carries them, its map
/// holding only what mpp adds; the listener writes them before the map's.
#[derive(Debug, Clone)]
pub struct HeaderLines {
    bytes: Bytes,
    /// A line mpp adds after them, made once per replica (`MPP.ServedBy`), or nothing.
    added: Bytes,
    length: Option<u64>,
    dated: bool,
}

impl HeaderLines {
    /// `bytes`, lines as this type describes them, of which a `Content-Length` says `length`
    /// and a `Date` line is there when `dated`.
    pub(super) fn new(bytes: Bytes, length: Option<u64>, dated: bool) -> Self {
        HeaderLines { bytes, added: Bytes::new(), length, dated }
    }

    /// Adds `line` (a `name: value` line, ending in CRLF, whose name is none of the lines')
    /// after the lines, in place of one mpp added before.
    pub fn add(&mut self, line: Bytes) {
        self.added = line;
    }

    /// The replica's lines, as they are to be written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The line mpp added, as it is to be written after them (empty if none).
    pub fn added(&self) -> &[u8] {
        &self.added
    }

    /// The length the lines' `Content-Length` gives (every line agreeing), if they have one.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether the lines have a `Date`.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// Each line's name and where its value lies in `bytes`.
    fn fields(bytes: &Bytes) -> impl Iterator<Item = (&[u8], Range<usize>)> {
        let bytes = &bytes[..];
        let mut at = 0;
        std::iter::from_fn(move || {
            let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
            let line = &bytes[at..line_end];
            let colon = line.iter().position(|&b| b == b':')?;
            let blank = line[colon + 1..].iter().take_while(|&&b| b == b' ' || b == b'\t').count();
            let field = (&line[..colon], at + colon + 1 + blank..line_end);
            at = line_end + 2;
            Some(field)
        })
    }

    /// Appends each line, the replica's and then the one mpp added, to `map`.
    pub fn append_to(&self, map: &mut HeaderMap) {
        for bytes in [&self.bytes, &self.added] {
            for (name, value) in Self::fields(bytes) {
                // Both were checked by httparse (or made by mpp), whose tokens and value bytes
                // are exactly what `HeaderName` and `HeaderValue` take (`parse_head` refused
                // a name too long for one): neither fails here.
                match (header_name(name), HeaderValue::from_maybe_shared(bytes.slice(value))) {
                    (Ok(name), Ok(value)) => {
                        map.append(name, value);
                    }
                    _ => debug_assert!(false, "a kept line httparse took that the map does not"),
                }
            }
        }
    }
}

/// A body that may carry its answer's header lines kept as bytes. The body carries them,
/// not the answer's extensions, because an extension costs its answer three allocations
/// (the map of extensions, its table, the value's box), a third of what keeping the lines
/// saves.
pub trait CarriesLines {
    /// The lines the body carries, if it does.
    fn lines_mut(&mut self) -> Option<&mut HeaderLines> {
        None
    }

    /// The lines the body carries (if it does), which it no longer does.
    fn take_lines(&mut self) -> Option<HeaderLines> {
        None
    }
}

impl CarriesLines for http_body_util::Full<Bytes> {}

impl<D, E> CarriesLines for http_body_util::combinators::BoxBody<D, E> {}

impl<S> CarriesLines for http_body_util::StreamBody<S> {}

impl<L: CarriesLines, R: CarriesLines> CarriesLines for http_body_util::Either<L, R> {
    fn lines_mut(&mut self) -> Option<&mut HeaderLines> {
        match self {
            http_body_util::Either::Left(body) => body.lines_mut(),
            http_body_util::Either::Right(body) => body.lines_mut(),
        }
    }

    fn take_lines(&mut self) -> Option<HeaderLines> {
        match self {
            http_body_util::Either::Left(body) => body.take_lines(),
            http_body_util::Either::Right(body) => body.take_lines(),
        }
    }
}

/// Puts the header lines `response`'s body carries (if it does) into its map, before what
/// mpp added there: for whatever reads or changes an answer's headers, or hands the answer
/// to another writer than mpp's HTTP/1.1 listener.
pub fn unpack<B: CarriesLines>(response: &mut Response<B>) {
    if let Some(lines) = response.body_mut().take_lines() {
        unpack_into(lines, response.headers_mut());
    }
}

/// Puts `lines` into `headers`, before what is there.
pub fn unpack_into(lines: HeaderLines, headers: &mut HeaderMap) {
    let added = std::mem::take(headers);
    lines.append_to(headers);
    headers.reserve(added.len());
    let mut name = None;
    for (next, value) in added {
        // `None` names a further value of the name before it.
        if next.is_some() {
            name = next;
        }
        if let Some(name) = &name {
            headers.append(name.clone(), value);
        }
    }
}

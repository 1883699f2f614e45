//! A replica's header lines kept as the bytes they came in ([`HeaderLines`]), for the answer
//! relayed whole to an HTTP/1.1 client: nothing on that path reads the replica's headers,
//! so they go from one socket to the other with one copy, where a map would have each
//! name made, hashed, inserted, looked at again when written, and dropped (about a tenth of
//! a request's instructions). Whatever reads or changes an answer's headers puts them in
//! its map first ([`unpack`]).

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};

use super::header_name;

/// The header lines of a replica's answer that travel on to the client, as they came:
/// `name: value` lines (the name in the replica's case), each ending in CRLF, none of them
/// one that belongs to the connection, each checked by httparse (a token for a name, the
/// bytes a [`HeaderValue`] takes for a value). An answer carries them as an extension, its
/// map holding only what mpp adds; the listener writes them before the map's.
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
        map.reserve(Self::fields(&self.bytes).count() + usize::from(!self.added.is_empty()));
        for bytes in [&self.bytes, &self.added] {
            for (name, value) in Self::fields(bytes) {
                // Both were checked by httparse (or made by mpp), whose tokens and value bytes
                // are exactly what `HeaderName` and `HeaderValue` take (`parse_head` refused
                // a name too long for one): neither fails here.
                if let (Ok(name), Ok(value)) = (header_name(name), HeaderValue::from_maybe_shared(bytes.slice(value))) {
                    map.append(name, value);
                }
            }
        }
    }
}

/// Puts the header lines `response` kept as bytes (if it did) into its map, before what mpp
/// added there: for whatever reads or changes an answer's headers, or hands the answer to
/// another writer than mpp's HTTP/1.1 listener.
pub fn unpack<B>(response: &mut Response<B>) {
    let Some(lines) = response.extensions_mut().remove::<HeaderLines>() else { return };
    let added = std::mem::take(response.headers_mut());
    let headers = response.headers_mut();
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

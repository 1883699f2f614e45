//! A message body's framing taken off the bytes read: `Content-Length`, `chunked` (with
//! its extensions and trailers bounded), or everything up to the close.

use bytes::{Bytes, BytesMut};

use super::{Framing, ProtocolError};

/// The longest chunk-size line (with extensions), the most extension bytes in one body, and
/// the most trailer bytes taken (hyper's client limits for the last two).
pub(super) const MAX_CHUNK_LINE: usize = 4096;
pub(super) const MAX_EXTENSION_BYTES: usize = 16 * 1024;
pub(super) const MAX_TRAILER_BYTES: usize = 16 * 1024;

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

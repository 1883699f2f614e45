//! A request's body, read from the client's socket by whoever polls it; the socket goes back
//! to the serve loop when the body is dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;

use super::{BODY_READ, CONTINUE, Reader};
use crate::http1::{Decoded, Decoder, ProtocolError};

/// A request's body, read from the client's socket by whoever polls it (the proxy, which
/// reads bodies whole); it gives the socket back to the loop when dropped.
pub struct RequestBody(pub(super) Option<Box<Streaming>>);

pub(super) struct Streaming {
    pub(super) reader: Option<Reader>,
    pub(super) decoder: Decoder,
    /// How much of [`CONTINUE`] is still to be written before the body is read.
    pub(super) interim: usize,
    /// [`CONTINUE`] is written but not yet flushed.
    pub(super) unflushed: bool,
    pub(super) back: Option<oneshot::Sender<Returned>>,
}

/// The socket handed back, whether the body was read to its end, and how much of
/// [`CONTINUE`] was left unwritten.
pub(super) struct Returned {
    pub(super) reader: Reader,
    pub(super) complete: bool,
    pub(super) interim: usize,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(Returned { reader, complete: self.decoder.is_done(), interim: self.interim });
        }
    }
}

/// A request body that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The socket failed.
    #[error("reading the request body failed: {0}")]
    Io(#[from] io::Error),
    /// The client closed its side before the body's end.
    #[error("the client closed the connection before the request body was complete")]
    Incomplete,
    /// The chunked framing is broken.
    #[error("the request body is malformed: {0}")]
    Malformed(&'static str),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(streaming) = self.0.as_mut() else { return Poll::Ready(None) };
        let Some(reader) = streaming.reader.as_mut() else { return Poll::Ready(None) };
        while streaming.interim > 0 {
            let unsent = &CONTINUE[CONTINUE.len() - streaming.interim..];
            match ready!(Pin::new(&mut reader.io).poll_write(cx, unsent)) {
                Ok(0) => return Poll::Ready(Some(Err(io::Error::from(io::ErrorKind::WriteZero).into()))),
                Ok(n) => streaming.interim -= n,
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
            streaming.unflushed = streaming.interim == 0;
        }
        if streaming.unflushed {
            // Over TLS, the interim answer must leave rustls's buffer before the body comes.
            if let Err(error) = ready!(Pin::new(&mut reader.io).poll_flush(cx)) {
                return Poll::Ready(Some(Err(error.into())));
            }
            streaming.unflushed = false;
        }
        loop {
            match streaming.decoder.decode(&mut reader.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(ProtocolError::InvalidChunk(what)) => return Poll::Ready(Some(Err(BodyError::Malformed(what)))),
                Err(_) => return Poll::Ready(Some(Err(BodyError::Malformed("its framing is invalid")))),
            }
            let room = streaming.decoder.remaining().map_or(BODY_READ, |n| n.clamp(1, BODY_READ as u64) as usize);
            match ready!(reader.poll_fill(cx, room)) {
                Ok(0) => return Poll::Ready(Some(Err(BodyError::Incomplete))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.decoder.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_ref().map(|s| s.decoder.remaining()) {
            None => SizeHint::with_exact(0),
            Some(Some(n)) => SizeHint::with_exact(n),
            Some(None) => SizeHint::default(),
        }
    }
}

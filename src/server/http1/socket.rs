//! A client connection's socket as the serve loop holds it ([`Reader`]), the HTTP/2 preface
//! told apart from an HTTP/1 request, and the plumbing around a connection: the socket
//! handed to hyper's HTTP/2 server with what was read of it ([`Prefixed`]), and the serving
//! future as the watcher drives it ([`Watched`]).

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Control, HEAD_READ, HTTP2_PREFACE};
use crate::body::BoxError;

/// What a reader without a buffer takes once bytes arrive: that many bytes, rounded up to a
/// multiple of this.
const FIRST_ROUND: usize = 1024;

thread_local! {
    /// Where a reader without a buffer reads (see [`Reader::poll_fill`]): one read's worth
    /// per serving thread, never held across a wait.
    static SCRATCH: std::cell::RefCell<Box<[u8; HEAD_READ]>> = std::cell::RefCell::new(Box::new([0; HEAD_READ]));
}

/// A client connection's socket (plain or TLS, metered), as the loop holds it.
/// (`Sync` too: the request, body and all, is borrowed across the web config's checks.)
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A client socket and the bytes read from it that are not consumed yet.
pub struct Reader {
    pub(super) io: Box<dyn Io>,
    pub(super) buf: BytesMut,
}

impl Reader {
    /// A reader of `io`, with nothing read yet.
    pub fn new(io: Box<dyn Io>) -> Self {
        Reader { io, buf: BytesMut::new() }
    }

    /// Reads what is there (after making room for `room` bytes); 0 at the end. A reader
    /// without a buffer (new, or idle: see [`Reader::fill_idle`]) reads into the serving
    /// thread's scratch space and takes a buffer only once bytes arrive.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        // Only for a head's read: a body's larger reads go straight into a buffer of their size.
        if self.buf.capacity() == 0 && room <= HEAD_READ {
            return SCRATCH.with_borrow_mut(|scratch| {
                let mut read = ReadBuf::new(&mut scratch[..]);
                std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
                let filled = read.filled();
                if !filled.is_empty() {
                    // As much as came, rounded up: a request head usually comes whole.
                    self.buf = BytesMut::with_capacity(filled.len().next_multiple_of(FIRST_ROUND));
                    self.buf.extend_from_slice(filled);
                }
                Poll::Ready(Ok(filled.len()))
            });
        }
        if self.buf.capacity() - self.buf.len() < room / 4 {
            self.buf.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    pub(super) async fn fill(&mut self, room: usize) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx, room)).await
    }

    /// [`Reader::fill`] between requests, with nothing buffered: once no bytes are there yet,
    /// the buffer is given back while the client keeps its connection idle (ten thousand idle
    /// Grafana users would otherwise hold 8 KiB each).
    pub(super) async fn fill_idle(&mut self, room: usize) -> io::Result<usize> {
        poll_fn(|cx| {
            let read = self.poll_fill(cx, room);
            if read.is_pending() && self.buf.is_empty() && self.buf.capacity() > 0 {
                self.buf = BytesMut::new();
            }
            read
        })
        .await
    }

    /// While an answer is being worked out or sent: whether the client has closed its side
    /// (or the socket failed). As hyper does, this reads only while nothing is buffered, so
    /// one read's worth of a pipelined request is kept, and a request with another already
    /// buffered behind it is answered even if the client has since half-closed. A half-close
    /// with nothing buffered counts as hanging up (hyper's default too: the end of input
    /// cannot be told from a close).
    pub(super) fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // Nothing kept for a read that usually finds nothing (see `poll_fill`).
        self.buf = BytesMut::new();
        matches!(self.poll_fill(cx, HEAD_READ), Poll::Ready(Ok(0) | Err(_)))
    }

    /// The socket and the bytes read but not consumed, for hyper's HTTP/2 server.
    pub fn into_parts(self) -> (Box<dyn Io>, Bytes) {
        (self.io, self.buf.freeze())
    }
}

/// How a clear-text connection's first bytes say which protocol it speaks.
pub enum Http2Preface {
    /// The HTTP/2 preface: the connection is hyper's.
    Yes,
    /// Anything else: HTTP/1.
    No,
    /// The connection closed (or failed) before saying.
    Closed,
}

/// Reads until the first bytes tell an HTTP/2 preface from an HTTP/1 request.
pub async fn detect_http2(reader: &mut Reader, control: &Control) -> Http2Preface {
    loop {
        let seen = reader.buf.len().min(HTTP2_PREFACE.len());
        if reader.buf[..seen] != HTTP2_PREFACE[..seen] {
            return Http2Preface::No;
        }
        if seen == HTTP2_PREFACE.len() {
            return Http2Preface::Yes;
        }
        control.idle.store(seen == 0, Ordering::Relaxed);
        let read = reader.fill(HEAD_READ).await;
        control.idle.store(false, Ordering::Relaxed);
        if !matches!(read, Ok(n) if n > 0) {
            return Http2Preface::Closed;
        }
    }
}

/// A socket with bytes already read from it put back in front, for hyper's HTTP/2 server.
pub struct Prefixed {
    prefix: Bytes,
    io: Box<dyn Io>,
}

impl Prefixed {
    /// `io`, whose reads start with `prefix`.
    pub fn new((io, prefix): (Box<dyn Io>, Bytes)) -> Self {
        Prefixed { prefix, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A connection's serving future with its [`Control`], as the watcher drives it.
pub struct Watched<F> {
    future: Pin<Box<F>>,
    control: Arc<Control>,
}

impl<F> Watched<F> {
    /// `future`, closed through `control`.
    pub fn new(future: F, control: Arc<Control>) -> Self {
        Watched { future: Box::pin(future), control }
    }
}

impl<F: Future<Output = Result<(), BoxError>>> Future for Watched<F> {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.control.may_drop() {
            return Poll::Ready(Ok(()));
        }
        self.future.as_mut().poll(cx)
    }
}

impl<F> crate::server::connection::GracefulClose for Watched<F> {
    fn close_gracefully(self: Pin<&mut Self>) {
        self.control.close();
    }
}

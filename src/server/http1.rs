//! mpp's own HTTP/1.1 server side: the listener-side twin of the request path's client
//! ([`crate::client::http1`]). One loop per client connection reads a request head into the
//! connection's buffer, parses it with `httparse`, hands the request to the service on the
//! same task, and writes the answer's head and its first bytes of body in one write. hyper
//! still serves HTTP/2 ([`Http2Preface`] tells the two apart on clear-text connections).
//!
//! What it keeps of hyper's HTTP/1 server, on purpose:
//! - the same limits: a head over `--max-header-bytes` ([`HeadLimits`]) or with more than
//!   [`super::MAX_HEADERS`] lines gets 431; a malformed one gets 400; the connection then
//!   closes;
//! - what hyper lacks: every connection's unfinished head, past its first [`HEAD_FREE`]
//!   bytes, is paid for from one budget (`--request-head-budget`) as it arrives, so that many
//!   connections sending huge heads slowly cannot take the memory; a connection that cannot
//!   pay gets 503 and is closed;
//! - request framing as RFC 9112 section 6 says: `Transfer-Encoding` ending in `chunked`
//!   wins over a `Content-Length` (which is dropped, and the connection closes after the
//!   answer, so nothing smuggled behind the body is read as a request); conflicting lengths,
//!   a `Transfer-Encoding` not ending in `chunked`, or one in HTTP/1.0 get 400;
//! - keep-alive by version and `Connection`; `Expect: 100-continue` answered;
//!   pipelined requests answered in order;
//! - a client that closes its connection while its request is being answered cancels it
//!   (the replica's connection is dropped, so Prometheus stops the query).

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice, Write as _};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::MAX_HEADERS;
use crate::body::BoxError;
use crate::client::http1::{self as wire, Decoded, Decoder, Framing, ProtocolError, header_line};

/// A client connection's socket (plain or TLS, metered), as the loop holds it.
/// (`Sync` too: the request, body and all, is borrowed across the web config's checks.)
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The longest request target taken; longer ones get 414 (hyper's limit).
const MAX_TARGET: usize = u16::MAX as usize - 1;
/// The first bytes of every HTTP/2 connection (RFC 9113 section 3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Room made in the read buffer before a read of a request head.
const HEAD_READ: usize = 8 * 1024;
/// The bytes of a connection's read buffer an unfinished head may take before it pays for
/// more from the heads' budget: the usual request never touches it.
pub const HEAD_FREE: usize = 2 * HEAD_READ;
/// Room made in the read buffer before a read of a request body.
const BODY_READ: usize = 64 * 1024;
/// Body bytes up to which an answer's data is copied next to its head (or chunk line) and
/// written in one piece; larger data is written from where it lies, with a vectored write.
const COPY_LIMIT: usize = 16 * 1024;

/// What the loop serves requests with: the admission, routing and proxying of
/// [`super::respond`], with the connection's activity kept.
pub trait Service {
    /// The answer's body.
    type Body: Body<Data = Bytes, Error: Into<BoxError> + Send> + Unpin + Send;
    /// The answer to `request`.
    fn call(&self, request: Request<RequestBody>) -> impl Future<Output = Response<Self::Body>> + Send;

    /// Part of the next request's head was read while this one was answered: its header
    /// deadline runs from now.
    fn head_waiting(&self) {}
}

/// What request heads may take.
#[derive(Debug, Clone)]
pub struct HeadLimits {
    /// The largest head (`--max-header-bytes`).
    pub max: usize,
    /// What the unfinished heads of every connection may hold together beyond their first
    /// [`HEAD_FREE`] bytes (`--request-head-budget`), in bytes.
    pub budget: Arc<Semaphore>,
}

impl HeadLimits {
    /// Heads of at most `max` bytes, `budget` bytes of them at a time.
    pub fn new(max: usize, budget: usize) -> Self {
        HeadLimits { max, budget: Arc::new(Semaphore::new(budget.min(Semaphore::MAX_PERMITS))) }
    }
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits::new(super::DEFAULT_MAX_HEADER_BYTES, super::DEFAULT_HEAD_BUDGET)
    }
}

/// Shared between the loop and the watcher ([`super::connection::watch`]): a close asked
/// for, and whether the loop is waiting for a request with nothing read of it; and the heads'
/// limits.
#[derive(Debug, Default)]
pub struct Control {
    closing: AtomicBool,
    idle: AtomicBool,
    heads: HeadLimits,
}

impl Control {
    /// The control of a connection whose heads are held to `heads`.
    pub fn new(heads: HeadLimits) -> Self {
        Control { closing: AtomicBool::new(false), idle: AtomicBool::new(false), heads }
    }

    /// Asks the loop to close after the answer in progress (at once, when idle).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether a close was asked for.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Whether the loop may be dropped now: asked to close, and between requests.
    pub fn may_drop(&self) -> bool {
        self.closing() && self.idle.load(Ordering::Relaxed)
    }
}

/// A client socket and the bytes read from it that are not consumed yet.
pub struct Reader {
    io: Box<dyn Io>,
    buf: BytesMut,
}

impl Reader {
    /// A reader of `io`, with nothing read yet.
    pub fn new(io: Box<dyn Io>) -> Self {
        Reader { io, buf: BytesMut::new() }
    }

    /// Reads what is there (after making room for `room` bytes); 0 at the end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < room / 4 {
            self.buf.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self, room: usize) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx, room)).await
    }

    /// While an answer is being worked out or sent: whether the client has closed its side
    /// (or the socket failed). As hyper does, this reads only while nothing is buffered, so
    /// one read's worth of a pipelined request is kept, and a request with another already
    /// buffered behind it is answered even if the client has since half-closed. A half-close
    /// with nothing buffered counts as hanging up (hyper's default too: the end of input
    /// cannot be told from a close).
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
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

/// Serves HTTP/1.1 requests on `reader` until the client closes, a request asks to, an
/// error, or [`Control::close`].
pub async fn serve<S: Service + Sync>(reader: Reader, service: &S, control: &Control) -> Result<(), BoxError> {
    let mut reader = Some(reader);
    let mut out = Vec::with_capacity(512);
    loop {
        let Some(r) = reader.as_mut() else { return Ok(()) };
        let max = control.heads.max;
        // What this head has paid from the budget; given back once it is complete.
        let mut paid: Option<OwnedSemaphorePermit> = None;
        let head = loop {
            match parse_request(&mut r.buf, max) {
                Ok(Some(head)) => break head,
                Ok(None) if r.buf.len() >= max => {
                    return refuse(r, &mut out, HeadError::TooLarge(max)).await;
                }
                Ok(None) => {}
                Err(error) => return refuse(r, &mut out, error).await,
            }
            let idle = r.buf.is_empty();
            if idle && control.closing() {
                return Ok(());
            }
            control.idle.store(idle, Ordering::Relaxed);
            let read = r.fill(HEAD_READ).await;
            control.idle.store(false, Ordering::Relaxed);
            if read? == 0 {
                // Closed between requests, or mid-head: nobody to answer.
                return Ok(());
            }
            if r.buf.capacity() > HEAD_FREE && !pay(&mut paid, r.buf.capacity() - HEAD_FREE, &control.heads.budget) {
                return refuse(r, &mut out, HeadError::OverBudget).await;
            }
        };
        drop(paid);
        let RequestHead { parts, decoder, keep_alive, expects_continue } = head;
        let answer_head = parts.method == Method::HEAD;
        let version = parts.version;
        let mut returned = None;
        let body = if decoder.is_done() {
            RequestBody(None)
        } else {
            let (back, comes_back) = oneshot::channel();
            returned = Some(comes_back);
            let reader = reader.take();
            // The interim answer goes when the body is first read, so that a request refused
            // from its head alone (413, 401) does not invite the client to send the body.
            let interim = if expects_continue { CONTINUE.len() } else { 0 };
            RequestBody(Some(Box::new(Streaming { reader, decoder, interim, unflushed: false, back: Some(back) })))
        };
        let mut body_complete = returned.is_none();
        let mut interim_left = 0;
        let response = {
            let mut answer = pin!(service.call(Request::from_parts(parts, body)));
            poll_fn(|cx| {
                if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                if let Some(comes_back) = returned.as_mut() {
                    // The body is read (or dropped): the socket is the loop's again.
                    if let Poll::Ready(back) = Pin::new(comes_back).poll(cx) {
                        returned = None;
                        if let Ok(Returned { reader: r, complete, interim }) = back {
                            reader = Some(r);
                            body_complete = complete;
                            interim_left = interim;
                        }
                    }
                }
                if reader.as_mut().is_some_and(|r| r.poll_gone(cx)) { Poll::Ready(None) } else { Poll::Pending }
            })
            .await
        };
        // The request went with the service's future: a body it held has come back by now.
        if let Some(mut comes_back) = returned.take() {
            match comes_back.try_recv() {
                Ok(Returned { reader: r, complete, interim }) => {
                    reader = Some(r);
                    body_complete = complete;
                    interim_left = interim;
                }
                Err(_) => {
                    tracing::warn!("a request body outlived its answer; closing the connection unanswered");
                    return Ok(());
                }
            }
        }
        let Some(response) = response else {
            // The client left: its answer is dropped, which cancels it.
            return Ok(());
        };
        let Some(r) = reader.as_mut() else { return Ok(()) };
        if interim_left > 0 && interim_left < CONTINUE.len() {
            // The interim answer went out in part before the body was dropped: finish it, so
            // that the final answer starts on a message boundary.
            r.io.write_all(&CONTINUE[CONTINUE.len() - interim_left..]).await?;
        }
        // A body left unread cannot be told from the next request: close after the answer.
        let keep_alive = keep_alive && body_complete && !control.closing();
        let keep_alive = write_response(r, &mut out, response, answer_head, version, keep_alive).await?;
        if !keep_alive {
            let _ = r.io.shutdown().await;
            return Ok(());
        }
        if !r.buf.is_empty() {
            service.head_waiting();
        }
    }
}

/// A request head, parsed.
#[derive(Debug)]
struct RequestHead {
    parts: http::request::Parts,
    decoder: Decoder,
    keep_alive: bool,
    expects_continue: bool,
}

/// A request head that cannot be served, and the answer it gets.
#[derive(Debug, thiserror::Error)]
enum HeadError {
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
    fn status(&self) -> StatusCode {
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
fn parse_request(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
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
    let mut present = wire::FramingHeaders::default();
    for h in request.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Invalid("a header name"))?;
        present.note(&name);
        names.push((name, within(h.value)?));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| HeadError::Invalid("the request target"))?;
    // Room for what the proxy adds (X-Forwarded-For, -Proto, -Host, Via, credentials), so
    // that the map is not grown, and rehashed, on the way to the replica.
    let mut headers = HeaderMap::with_capacity(names.len() + 5);
    for (name, value) in names {
        // httparse has checked the value's bytes (no CR, LF or other controls but tab).
        let value =
            HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| HeadError::Invalid("a header value"))?;
        headers.append(name, value);
    }
    let mut keep_alive = wire::keep_alive(version, &headers, &present);
    let chunked = if present.transfer_encoding { wire::ends_in_chunked(&headers) } else { None };
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
        match wire::content_length(&headers) {
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

/// A request's parts, its body's decoder, and whether its connection may be kept.
pub type ParsedHead = (http::request::Parts, Decoder, bool);

/// The listener's request-head parser, for the fuzz target ([`crate::fuzzing`]): the
/// request's parts, its body's decoder and whether the connection may be kept, or why the
/// head is refused (with the status it gets).
pub fn parse_request_head(buf: &mut BytesMut) -> Result<Option<ParsedHead>, (StatusCode, String)> {
    match parse_request(buf, super::DEFAULT_MAX_HEADER_BYTES) {
        Ok(head) => Ok(head.map(|h| (h.parts, h.decoder, h.keep_alive))),
        Err(error) => Err((error.status(), error.to_string())),
    }
}

/// Answers a head that cannot be served, and closes.
async fn refuse(reader: &mut Reader, out: &mut Vec<u8>, error: HeadError) -> Result<(), BoxError> {
    let status = error.status();
    let text = format!("{error}\n");
    out.clear();
    status_line(out, status, Version::HTTP_11);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    let _ = write!(out, "content-length: {}\r\n", text.len());
    date_line(out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    reader.io.write_all(out).await?;
    let _ = reader.io.shutdown().await;
    Err(error.into())
}

/// Makes `paid` hold `owed` bytes of the heads' budget, taking what it lacks; false when the
/// budget cannot give it now.
fn pay(paid: &mut Option<OwnedSemaphorePermit>, owed: usize, budget: &Arc<Semaphore>) -> bool {
    let held = paid.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    if owed <= held {
        return true;
    }
    let Ok(more) = u32::try_from(owed - held) else { return false };
    match budget.clone().try_acquire_many_owned(more) {
        Ok(more) => {
            match paid {
                Some(paid) => paid.merge(more),
                None => *paid = Some(more),
            }
            true
        }
        Err(_) => false,
    }
}

/// Writes `response` (its head, and its body unless the request was `HEAD`), framed by its
/// `Content-Length`, its exact size, or chunked (HTTP/1.0: until the close). Returns whether
/// the connection may carry another request.
async fn write_response<B>(
    reader: &mut Reader,
    out: &mut Vec<u8>,
    response: Response<B>,
    answer_head: bool,
    version: Version,
    mut keep_alive: bool,
) -> Result<bool, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    if wire::connection_says(&parts.headers, "close") {
        keep_alive = false;
    }
    let no_body = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    out.clear();
    status_line(out, status, version);
    for (name, value) in &parts.headers {
        // The framing and the connection's fate are this loop's to say (and a 204 has no
        // length at all, RFC 9110 section 8.6).
        let ours = name == header::TRANSFER_ENCODING || name == header::CONNECTION;
        let lengthless = no_body && status != StatusCode::NOT_MODIFIED && name == header::CONTENT_LENGTH;
        if !ours && !lengthless {
            header_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let declared = if no_body { None } else { wire::content_length(&parts.headers).ok().flatten() };
    let exact = body.size_hint().exact();
    let mut framing = if no_body {
        Framing::Empty
    } else if let Some(length) = declared {
        Framing::Length(length)
    } else if let Some(length) = exact.filter(|&n| !answer_head || n > 0) {
        let _ = write!(out, "content-length: {length}\r\n");
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
    if answer_head {
        framing = Framing::Empty;
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        date_line(out);
    }
    out.extend_from_slice(b"\r\n");
    let io = &mut reader.io;
    if framing == Framing::Empty || matches!(framing, Framing::Length(0)) {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    let mut sent: u64 = 0;
    loop {
        // Data that is ready goes with what is waiting to be written; otherwise that is
        // written first, and then the body is waited for.
        let frame = if out.is_empty() {
            // A client that leaves while the answer is awaited cancels it, as before its head.
            let frame = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
                Poll::Pending if reader.poll_gone(cx) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await;
            frame.ok_or("the client closed the connection while its answer was sent")?
        } else {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    reader.io.write_all(out).await?;
                    reader.io.flush().await?;
                    out.clear();
                    continue;
                }
            }
        };
        let io = &mut reader.io;
        let (data, end) = match frame {
            None => (Bytes::new(), true),
            Some(Err(error)) => {
                // Nothing can say so in the answer: the client sees it cut short.
                let error: BoxError = error.into();
                let _ = io.write_all(out).await;
                return Err(error);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => (data, body.is_end_stream()),
                Err(_) => continue, // trailers: HTTP/1.1 clients did not ask for them
            },
        };
        if data.is_empty() && !end {
            continue;
        }
        if let Framing::Length(length) = framing
            && sent + data.len() as u64 > length
        {
            let _ = io.write_all(out).await;
            return Err(format!("the answer's body is longer than its Content-Length of {length}").into());
        }
        sent += data.len() as u64;
        let chunked = framing == Framing::Chunked && !data.is_empty();
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if out.len() + data.len() <= COPY_LIMIT {
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
        } else {
            let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
            write_all_vectored(io, &mut [IoSlice::new(out), IoSlice::new(&data), IoSlice::new(tail)]).await?;
            out.clear();
        }
        if end {
            if let Framing::Length(length) = framing
                && sent != length
            {
                let _ = io.write_all(out).await;
                return Err(format!("the answer's body ended after {sent} of its {length} bytes").into());
            }
            if framing == Framing::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            io.write_all(out).await?;
            io.flush().await?;
            out.clear();
            return Ok(keep_alive && framing != Framing::UntilClose);
        }
    }
}

async fn write_all_vectored(io: &mut dyn Io, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// The status line, in the version of the request (HTTP/1.0 clients get `HTTP/1.0`).
fn status_line(out: &mut Vec<u8>, status: StatusCode, version: Version) {
    out.extend_from_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: ...`, formatted once a second per thread.
fn date_line(out: &mut Vec<u8>) {
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

/// A request's body, read from the client's socket by whoever polls it (the proxy, which
/// reads bodies whole); it gives the socket back to the loop when dropped.
pub struct RequestBody(Option<Box<Streaming>>);

struct Streaming {
    reader: Option<Reader>,
    decoder: Decoder,
    /// How much of [`CONTINUE`] is still to be written before the body is read.
    interim: usize,
    /// [`CONTINUE`] is written but not yet flushed.
    unflushed: bool,
    back: Option<oneshot::Sender<Returned>>,
}

/// The socket handed back, whether the body was read to its end, and how much of
/// [`CONTINUE`] was left unwritten.
struct Returned {
    reader: Reader,
    complete: bool,
    interim: usize,
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

impl<F> super::connection::GracefulClose for Watched<F> {
    fn close_gracefully(self: Pin<&mut Self>) {
        self.control.close();
    }
}

#[cfg(test)]
mod tests;

//! mpp's own HTTP/1.1 server side: the listener-side twin of the request path's client
//! (both use [`crate::http1`]). One loop per client connection reads a request head into the
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
use std::task::Poll;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::body::BoxError;
use crate::http1::Framing;
use crate::http1::lines::CarriesLines;
use crate::http1::request::{HeadError, RequestHead, parse_request};
use crate::http1::response::{self, Encoder, date_line, status_line};

mod body;
mod socket;

pub use body::RequestBody;
use body::{Returned, Streaming};
pub use socket::{Http2Preface, Io, Prefixed, Reader, Watched, detect_http2};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
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
    type Body: Body<Data = Bytes, Error: Into<BoxError> + Send> + CarriesLines + Unpin + Send;
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
            let read = if idle { r.fill_idle(HEAD_READ).await } else { r.fill(HEAD_READ).await };
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

/// Writes `response` (its head, and its body unless the request was `HEAD`) as
/// [`response::write_head`] frames it. Returns whether the connection may carry another
/// request.
async fn write_response<B>(
    reader: &mut Reader,
    out: &mut Vec<u8>,
    response: Response<B>,
    answer_head: bool,
    version: Version,
    keep_alive: bool,
) -> Result<bool, BoxError>
where
    B: Body<Data = Bytes> + CarriesLines + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = response.into_parts();
    out.clear();
    let lines = body.take_lines();
    let plan =
        response::write_head(out, &parts, lines.as_ref(), body.size_hint().exact(), answer_head, version, keep_alive);
    if plan.framing == Framing::Empty || plan.framing == Framing::Length(0) {
        drop(body);
        reader.io.write_all(out).await?;
        reader.io.flush().await?;
        return Ok(plan.keep_alive);
    }
    let mut encoder = Encoder::new(plan.framing);
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
        let tail = match encoder.piece(out, data.len()) {
            Ok(tail) => tail,
            Err(error) => {
                let _ = io.write_all(out).await;
                return Err(error.into());
            }
        };
        if out.len() + data.len() <= COPY_LIMIT {
            out.extend_from_slice(&data);
            out.extend_from_slice(tail);
        } else {
            write_all_vectored(io, &mut [IoSlice::new(out), IoSlice::new(&data), IoSlice::new(tail)]).await?;
            out.clear();
        }
        if end {
            if let Err(error) = encoder.finish(out) {
                let _ = io.write_all(out).await;
                return Err(error.into());
            }
            io.write_all(out).await?;
            io.flush().await?;
            out.clear();
            return Ok(plan.keep_alive && plan.framing != Framing::UntilClose);
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

#[cfg(test)]
mod tests;

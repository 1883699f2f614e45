//! One client connection, held to a deadline in every phase, so that no client can keep a
//! connection slot (`--max-connections`) without using it:
//!
//! | phase | deadline |
//! |---|---|
//! | from accept to the first request (protocol detection, an HTTP/2 preface, HTTP/1 headers) | `--header-read-timeout` |
//! | an HTTP/1 request's headers, from their first byte (from the end of the previous answer, for a head read ahead while it was sent) | `--header-read-timeout` |
//! | a request body | `--request-body-min-rate`, after a grace of `--header-read-timeout` (enforced by the proxy) |
//! | writing an answer to a client that does not read | [`WRITE_STALL_TIMEOUT`] without progress |
//! | no request in flight (keep-alive) | `--idle-timeout`; [`PRESSURE_IDLE_TIMEOUT`] when slots run short |
//! | a dead peer | HTTP/2 pings every [`H2_PING_INTERVAL`]; TCP keepalive |
//!
//! The header deadline runs only while a head is on its way, never while a keep-alive
//! connection waits for its next request (Go's clients keep idle connections 90 s, and a
//! request racing a close fails). Reads are metered here and a small watcher per connection
//! enforces the table above, over the listener's own HTTP/1 loop ([`super::http1`]) or
//! hyper's HTTP/2 server alike.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::http1::lines::{CarriesLines, HeaderLines};

/// How long a write to a client may make no progress before the connection is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The idle timeout while connection slots run short (fewer than a tenth left).
pub const PRESSURE_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an HTTP/2 connection is pinged, and how long the answer may take.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// See [`H2_PING_INTERVAL`].
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection asked to close (idle, or shutting down with nothing in flight) may
/// take to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The watcher re-reads the state at least this often (slots may have run short meanwhile).
const WATCH_TICK: Duration = Duration::from_secs(1);

/// The deadlines of the table in the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// `--header-read-timeout`.
    pub header_read_timeout: Duration,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
}

/// Whether connection slots are running short, read from the slots themselves.
#[derive(Clone)]
pub(crate) struct Pressure {
    slots: Arc<Semaphore>,
    threshold: usize,
}

impl Pressure {
    /// Pressure when fewer than a tenth of `max` slots (at least one) are free.
    pub(crate) fn new(slots: Arc<Semaphore>, max: usize) -> Self {
        Pressure { slots, threshold: (max / 10).max(1) }
    }

    pub(crate) fn on(&self) -> bool {
        self.slots.available_permits() < self.threshold
    }
}

/// Why the watcher closed a connection (the `reason` label of
/// `mpp_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `--header-read-timeout`.
    HeaderTimeout,
    /// Idle for `--idle-timeout`.
    Idle,
    /// Idle while slots were running short.
    Pressure,
    /// Answers waiting to be sent made no progress for [`WRITE_STALL_TIMEOUT`].
    Stalled,
}

impl CloseReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::Idle => "idle",
            CloseReason::Pressure => "pressure",
            CloseReason::Stalled => "stalled",
        }
    }
}

/// What a connection is doing, shared by its requests (through [`InFlight`]), its reads
/// (through [`Metered`]) and its watcher. Atomics only: the request path never waits here.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    http2: AtomicBool,
    /// When the last request in flight ended (ms since `epoch`).
    idle_since: AtomicU64,
    /// When bytes first arrived with no request in flight (ms since `epoch`, plus one; 0:
    /// none since): an HTTP/1 request head on its way.
    head_started: AtomicU64,
    /// Answers whose head has been handed to hyper and whose body is not yet sent.
    answering: AtomicU32,
    /// When an answer last made progress: a body frame taken, or a write done (ms since
    /// `epoch`).
    progress: AtomicU64,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            answering: AtomicU32::new(0),
            progress: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request has arrived; it is in flight until the returned guard is dropped (with its
    /// answer's body).
    pub fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Bytes of a request head have arrived (or are waiting, read ahead while the previous
    /// request was answered): the header deadline runs from now, unless it already does.
    pub fn bytes_arrived(&self) {
        if self.head_started.load(Ordering::Relaxed) == 0 && self.in_flight.load(Ordering::Acquire) == 0 {
            self.head_started.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn progressed(&self) {
        self.progress.store(self.now_ms(), Ordering::Relaxed);
    }

    /// When the connection is due to be closed if nothing changes, and why. While requests
    /// are in flight, only answers that stall (the client reads nothing) make it due.
    pub fn deadline(&self, deadlines: &Deadlines, pressure: bool) -> Option<(Instant, CloseReason)> {
        let at = |ms: u64, after: Duration| self.epoch + Duration::from_millis(ms) + after;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            if self.answering.load(Ordering::Acquire) == 0 {
                return None;
            }
            return Some((at(self.progress.load(Ordering::Relaxed), WRITE_STALL_TIMEOUT), CloseReason::Stalled));
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            let limit = deadlines.header_read_timeout;
            return Some(if pressure && PRESSURE_IDLE_TIMEOUT < limit {
                (at(0, PRESSURE_IDLE_TIMEOUT), CloseReason::Pressure)
            } else {
                (at(0, limit), CloseReason::HeaderTimeout)
            });
        }
        let head_started = self.head_started.load(Ordering::Relaxed);
        if head_started != 0 && !self.http2.load(Ordering::Relaxed) {
            return Some((at(head_started - 1, deadlines.header_read_timeout), CloseReason::HeaderTimeout));
        }
        let idle_since = self.idle_since.load(Ordering::Relaxed);
        Some(if pressure && PRESSURE_IDLE_TIMEOUT < deadlines.idle_timeout {
            (at(idle_since, PRESSURE_IDLE_TIMEOUT), CloseReason::Pressure)
        } else {
            (at(idle_since, deadlines.idle_timeout), CloseReason::Idle)
        })
    }

    /// Whether a request is being served.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// One request in flight on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The request's answer is ready: its body, which counts as progress each time the
    /// client takes a frame of it, and which ends the request when dropped.
    pub fn answer<B>(self, body: B) -> Answer<B> {
        self.0.answering.fetch_add(1, Ordering::AcqRel);
        self.0.progressed();
        Answer { body, in_flight: self, waited: false }
    }
}

/// An answer's body on its way to the client (see [`InFlight::answer`]).
#[derive(Debug)]
pub struct Answer<B> {
    body: B,
    in_flight: InFlight,
    /// Whether the body's last poll found nothing ready: a frame that comes after a wait is
    /// progress to note; one ready at once follows a write that noted it (the clock is read
    /// only when it matters, at about 60 instructions a read).
    waited: bool,
}

impl<B> Drop for Answer<B> {
    fn drop(&mut self) {
        self.in_flight.0.answering.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B: CarriesLines> CarriesLines for Answer<B> {
    fn lines_mut(&mut self) -> Option<&mut HeaderLines> {
        self.body.lines_mut()
    }

    fn take_lines(&mut self) -> Option<HeaderLines> {
        self.body.take_lines()
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        let waited = std::mem::replace(&mut self.waited, frame.is_pending());
        if frame.is_ready() && waited {
            self.in_flight.0.progressed();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now_ms(), Ordering::Relaxed);
        activity.head_started.store(0, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client socket whose reads tell its [`Activity`] that bytes arrived, and whose writes
/// fail after [`WRITE_STALL_TIMEOUT`] without progress.
pub struct Metered<T> {
    io: T,
    activity: Arc<Activity>,
    stall: Option<Pin<Box<Sleep>>>,
}

impl<T> Metered<T> {
    /// Meters `io` for `activity`.
    pub fn new(io: T, activity: Arc<Activity>) -> Self {
        Metered { io, activity, stall: None }
    }

    /// Called when a write could not progress: fails once it has not for too long.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {WRITE_STALL_TIMEOUT:?}"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn written<R>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match result {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.stall = None;
                self.activity.progressed();
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.written(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.written(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A flush that is done at once wrote nothing the write before it did not note.
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(result) if self.stall.is_none() => Poll::Ready(result),
            result => self.written(cx, result),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Over TLS, the close_notify is a write like any other, held to the same stall limit.
        let result = Pin::new(&mut self.io).poll_shutdown(cx);
        self.written(cx, result)
    }
}

/// Drives `connection` (the HTTP/1 loop or hyper's HTTP/2 server, over a [`Metered`]
/// socket: [`super::http1::Watched`]) to its end, asking it
/// to close gracefully when its [`Activity`] passes a deadline or `shutdown` fires, and
/// dropping it [`CLOSE_GRACE`] later if it is then idle. Returns why the watcher closed it,
/// if it did, and the connection's own error, if any.
pub(crate) async fn watch<C, E>(
    connection: C,
    activity: &Activity,
    deadlines: Deadlines,
    pressure: &Pressure,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> (Option<CloseReason>, Option<E>)
where
    C: Future<Output = Result<(), E>> + GracefulClose,
{
    let mut connection = std::pin::pin!(connection);
    let mut closed_for = None;
    let mut closing_since: Option<Instant> = None;
    let mut shutting_down = *shutdown.borrow();
    if shutting_down {
        connection.as_mut().close_gracefully();
        closing_since = Some(Instant::now());
    }
    loop {
        let now = Instant::now();
        let due = match closing_since {
            Some(since) => Some((since + CLOSE_GRACE).max(now + Duration::from_millis(10))),
            None => activity.deadline(&deadlines, pressure.on()).map(|(at, _)| at),
        };
        let wake = due.map_or(now + WATCH_TICK, |due| due.min(now + WATCH_TICK));
        tokio::select! {
            // The connection first, and no random order: the other two are rare.
            biased;
            result = connection.as_mut() => return (closed_for, result.err()),
            changed = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                let _ = changed;
                if closing_since.is_none() {
                    connection.as_mut().close_gracefully();
                    closing_since = Some(Instant::now());
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                match closing_since {
                    // Asked to close and still here: drop it unless a request is still being
                    // answered (a shutdown's grace period bounds that one).
                    Some(since) if now >= since + CLOSE_GRACE && !activity.busy() => return (closed_for, None),
                    Some(_) => {}
                    None => {
                        if let Some((at, reason)) = activity.deadline(&deadlines, pressure.on()) {
                            if at <= now && reason == CloseReason::Stalled {
                                // A graceful close would wait for the very answer that stalls.
                                return (Some(reason), None);
                            }
                            if at <= now {
                                closed_for = Some(reason);
                                connection.as_mut().close_gracefully();
                                closing_since = Some(now);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A connection that can be asked to finish what it is doing and close.
pub(crate) trait GracefulClose {
    fn close_gracefully(self: Pin<&mut Self>);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINES: Deadlines =
        Deadlines { header_read_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(120) };

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_sends_a_request_is_due_after_the_header_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(
            activity.deadline(&DEADLINES, false),
            Some((start + Duration::from_secs(10), CloseReason::HeaderTimeout))
        );
        assert_eq!(activity.deadline(&DEADLINES, true), Some((start + PRESSURE_IDLE_TIMEOUT, CloseReason::Pressure)));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_due_while_a_request_is_in_flight_and_idle_time_counts_from_its_end() {
        let activity = Activity::new();
        let request = activity.begin(false);
        tokio::time::advance(Duration::from_secs(500)).await;
        assert_eq!(activity.deadline(&DEADLINES, true), None);
        drop(request);
        let ended = Instant::now();
        let (at, reason) = activity.deadline(&DEADLINES, false).unwrap();
        assert_eq!(reason, CloseReason::Idle);
        assert!(at >= ended + Duration::from_secs(119) && at <= ended + Duration::from_secs(120));
        let (at, reason) = activity.deadline(&DEADLINES, true).unwrap();
        assert_eq!(reason, CloseReason::Pressure);
        assert!(at <= ended + PRESSURE_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_client_does_not_take_makes_the_connection_due() {
        let activity = Activity::new();
        let request = activity.begin(true);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(activity.deadline(&DEADLINES, false), None, "a slow query is waited for");
        let answer = request.answer(http_body_util::Empty::<bytes::Bytes>::new());
        let ready = Instant::now();
        let (at, reason) = activity.deadline(&DEADLINES, false).unwrap();
        assert_eq!(reason, CloseReason::Stalled);
        assert!(at <= ready + WRITE_STALL_TIMEOUT && at >= ready + WRITE_STALL_TIMEOUT - Duration::from_millis(1));
        drop(answer);
        assert_eq!(activity.deadline(&DEADLINES, false).unwrap().1, CloseReason::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_head_on_its_way_has_the_header_timeout_but_http2_frames_do_not() {
        let activity = Activity::new();
        drop(activity.begin(false));
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.bytes_arrived();
        let arrived = Instant::now();
        let (at, reason) = activity.deadline(&DEADLINES, false).unwrap();
        assert_eq!(reason, CloseReason::HeaderTimeout);
        assert!(at <= arrived + Duration::from_secs(10) && at >= arrived + Duration::from_secs(9));

        let h2 = Activity::new();
        drop(h2.begin(true));
        h2.bytes_arrived(); // a PING, say
        assert_eq!(h2.deadline(&DEADLINES, false).unwrap().1, CloseReason::Idle);
    }
}

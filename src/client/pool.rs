//! The request path's own connections to the replicas: one [`Pool`] per serving thread,
//! holding idle HTTP/1.1 connections ([`super::http1`] speaks the protocol). Probes and
//! discovery keep the pooled legacy client ([`super::HttpClient`]).
//!
//! A request is written and its answer read on the task that serves the client, with no
//! connection task, no channel between the two, and no lock but the pool's own, held for a
//! push or a pop. The answer's [`Body`] owns the connection while it streams and puts it
//! back in the pool the moment its last byte is read (when the replica keeps it open and
//! sent nothing after it); a body dropped before its end closes the connection. The pool
//! holds only idle connections, the most recently used on top (which keeps the connections in
//! use few and warm, and lets the others time out).
//!
//! What it keeps exact for the retry policy ([`Error`]): whether the request may have been
//! written. An idle connection is looked at before it is used: one the replica closed (or
//! that has bytes nobody asked for) is dropped and another taken. That look is free, and sees
//! what the runtime has seen; a close that crossed the request may still come after it. So a
//! request that must not go twice (a write) also asks the kernel (a `recv` with `MSG_PEEK`)
//! before it goes on a reused connection, and a query whose reused connection closes before
//! a byte of answer goes again, once, on a new connection, as Go's transport does.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, Uri};
use hyper::body::{Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use super::Connector;
use crate::body::BoxError;
use crate::http1::lines::{CarriesLines, HeaderLines};
use crate::http1::{self, Decoded, Decoder};

/// A connection that has not carried a request for this long is closed (as the legacy
/// client's `pool_idle_timeout`); Prometheus would otherwise keep it open for good.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked at for [`IDLE_TIMEOUT`]: one found idle at this many
/// looks in a row has been idle for between `IDLE_TIMEOUT - SWEEP_INTERVAL` and `IDLE_TIMEOUT`.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);
const IDLE_SWEEPS: u32 = (IDLE_TIMEOUT.as_secs() / SWEEP_INTERVAL.as_secs()) as u32;
/// How much room a read is given: an API answer of a few kilobytes arrives in one read, and
/// a streamed one in reads of this size.
const READ_CHUNK: usize = 16 * 1024;
/// A request body up to this size goes out in the same write as its head.
const INLINE_BODY: usize = 16 * 1024;
/// A connection's write buffer larger than this (after a very large head) is not kept.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// What a connection reads and writes: TCP, or TLS over it.
type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// How sending a request failed, and whether it may have been written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing was written: the connection could not be made (TCP, TLS), or the request
    /// names no replica.
    #[error("{0}")]
    NotSent(BoxError),
    /// The request may have reached the replica (the connection failed while writing it or
    /// waiting for the answer, or the answer was not HTTP).
    #[error("{0}")]
    Sent(BoxError),
}

/// A request as it goes to a replica, borrowed from the request mpp read: every attempt
/// writes the same one (only the target may differ).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target (origin form) in pieces written one after another: the replica's
    /// path prefix, the client's path and query, a parameter mpp adds.
    pub target: [&'a str; 3],
    /// The headers, as they are to be sent (`Host` is added when they have none).
    pub headers: &'a HeaderMap,
    /// More headers, sent after those.
    pub added: &'a [(HeaderName, HeaderValue)],
    /// The whole body.
    pub body: &'a Bytes,
    /// Whether the request may reach the replica twice (a query): it then goes again on a
    /// new connection when a reused one turns out closed before it answered.
    pub replayable: bool,
    /// Whether the answer's headers may stay the bytes they came in
    /// ([`http1::response::parse_head_as`]): the answer goes whole to mpp's HTTP/1.1
    /// listener, and nothing reads its headers on the way.
    pub keep_lines: bool,
}

/// What the request path needs of its connections to the replicas: send one request and
/// get the answer's head, its body streaming after. [`Pool`] is the one mpp runs on; the
/// request path's unit tests answer with replicas of their own making. The request path is
/// generic over it (monomorphised, not `dyn`), so that it costs [`Pool`] nothing.
pub trait Transport: Clone + Send + Sync + 'static {
    /// An answer's body.
    type Body: hyper::body::Body<Data = Bytes, Error = BoxError> + CarriesLines + Send + Unpin + 'static;

    /// Sends `request` to the replica at `scheme` and `authority` and waits for the
    /// answer's head; the body streams after. The head carries no hop-by-hop header (RFC 9110
    /// section 7.6.1): those were the connection's, and the answer goes on without them.
    fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        request: Outgoing<'_>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Error>> + Send;
}

impl Transport for Pool {
    type Body = Body;

    fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        request: Outgoing<'_>,
    ) -> impl Future<Output = Result<Response<Body>, Error>> + Send {
        // Pool's own `send`: an inherent method is found before a trait's, so this is no recursion.
        Pool::send(self, scheme, authority, request)
    }
}

/// One serving thread's connections to the replicas. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    max_per_replica: usize,
    /// Per replica, looked up by a scan: a thread talks to a handful of replicas, and
    /// comparing a short authority is cheaper than hashing it.
    replicas: Mutex<Vec<Connections>>,
    /// Whether the idle sweep has been started (on the serving thread's runtime, at first use).
    sweeping: std::sync::atomic::AtomicBool,
}

/// Connections are shared by the replicas that have the same scheme and authority.
type Key = (Scheme, Authority);

/// Whether `key` is `scheme` and `authority`. The authority is compared byte for byte (a
/// memcmp), not as `Authority`'s own `==` does (ignoring case, a byte at a time: it showed
/// twice per request in the profile): a replica's authority is always the same text, its
/// URL's, and two spellings of one host would only keep two lists of connections.
fn same_key(key: &Key, scheme: &Scheme, authority: &Authority) -> bool {
    key.1.as_str() == authority.as_str() && key.0 == *scheme
}

/// One replica's idle connections, the most recently used last.
struct Connections {
    key: Key,
    #[expect(
        clippy::vec_box,
        reason = "a connection moves between the pool and an answer's body on every request: boxed, that is a pointer"
    )]
    idle: Vec<Box<Conn>>,
}

/// One connection to a replica, with its buffers.
struct Conn {
    io: Io,
    /// What has been read and not yet taken: an answer's head or body bytes.
    read: BytesMut,
    /// The request head (and a small body) being written; kept for the next request.
    write: Vec<u8>,
    /// The `Host` header for the replica.
    host: HeaderValue,
    /// How many sweeps in a row have found it idle (counted rather than timed, so that a
    /// request reads no clock for it).
    idle_sweeps: u32,
}

impl Conn {
    /// Whether the kernel holds neither a close nor bytes from the replica on the
    /// connection (a `recv` with `MSG_PEEK` that would block). One system call.
    fn peek_usable(&self) -> bool {
        let tcp = match self.io.inner() {
            MaybeHttpsStream::Http(tcp) => tcp.inner(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner(),
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(tcp).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Whether an idle connection can carry a request: not closed by the replica, and with
    /// nothing to read. A read that would block costs no system call here (tokio knows the
    /// socket has had no event since its last short read).
    fn poll_usable(&mut self, cx: &mut Context<'_>) -> bool {
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(cx, &mut probe), Poll::Pending)
    }
}

impl Pool {
    /// A pool over `connector` (http and https, the replicas' TLS options), keeping at most
    /// `max_per_replica` idle connections to each replica.
    pub fn new(connector: Connector, max_per_replica: u32) -> Self {
        Pool {
            shared: Arc::new(Shared {
                connector,
                max_per_replica: max_per_replica.max(1) as usize,
                replicas: Mutex::new(Vec::new()),
                sweeping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Sends `request` to the replica at `scheme` and `authority` and waits for the answer's
    /// head. The answer's body streams from the connection.
    pub async fn send(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        request: Outgoing<'_>,
    ) -> Result<Response<Body>, Error> {
        self.start_sweeping();
        let mut fresh = false;
        loop {
            let (mut conn, reused) = self.take(scheme, authority, fresh, request.replayable).await?;
            match exchange(&mut conn, &request).await {
                Ok((head, body_whole)) => {
                    let mut answer = Body {
                        lines: head.lines.map(Box::new),
                        conn: Some(conn),
                        decoder: Decoder::new(head.framing),
                        // A body the replica answered before it read it whole leaves the
                        // connection in no state to reuse.
                        keep_alive: head.keep_alive && body_whole,
                        home: Arc::downgrade(&self.shared),
                        key: (scheme.clone(), authority.clone()),
                    };
                    answer.finish_if_done();
                    return Ok(head.response.map(|()| answer));
                }
                // A reused connection that the replica closed before it answered a byte (its
                // close crossed the request): a request that may go twice goes again, once, on
                // a new connection, as Go's transport does.
                Err(Failed { unanswered: true, .. }) if reused && request.replayable && !fresh => fresh = true,
                Err(Failed { error, .. }) => return Err(Error::Sent(error)),
            }
        }
    }

    /// A connection to the replica: the most recently used idle one that is still usable,
    /// unless `fresh`, else a new one; and whether it was reused. For a request that must not
    /// go twice, a reused connection is also asked the kernel (one `recv` with `MSG_PEEK`)
    /// whether the replica has closed it, a close that tokio may not have seen yet.
    async fn take(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        fresh: bool,
        replayable: bool,
    ) -> Result<(Box<Conn>, bool), Error> {
        while !fresh && let Some(mut conn) = self.checkout(scheme, authority) {
            if std::future::poll_fn(|cx| Poll::Ready(conn.poll_usable(cx))).await && (replayable || conn.peek_usable())
            {
                return Ok((conn, true));
            }
        }
        // Boxed: opening a connection is rare, and its future (the TCP and TLS handshakes)
        // would otherwise grow every request's future, which is moved about.
        Ok((Box::pin(self.connect(scheme, authority)).await?, false))
    }

    /// The most recently used idle connection to the replica, if any.
    fn checkout(&self, scheme: &Scheme, authority: &Authority) -> Option<Box<Conn>> {
        let mut replicas = self.shared.replicas.lock().expect("no code panics holding the pool's lock");
        replicas.iter_mut().find(|c| same_key(&c.key, scheme, authority))?.idle.pop()
    }

    /// Opens a connection to the replica.
    async fn connect(&self, scheme: &Scheme, authority: &Authority) -> Result<Box<Conn>, Error> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Error::NotSent(e.into()))?;
        let mut connector = self.shared.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(Error::NotSent)?;
        let io = connector.call(uri).await.map_err(Error::NotSent)?;
        Ok(Box::new(Conn {
            io: TokioIo::new(io),
            read: BytesMut::new(),
            write: Vec::new(),
            host: host(scheme, authority),
            idle_sweeps: 0,
        }))
    }

    /// Starts, once, the task that closes connections idle for [`IDLE_TIMEOUT`]; it runs on
    /// this serving thread and ends with the pool.
    fn start_sweeping(&self) {
        use std::sync::atomic::Ordering;
        if self.shared.sweeping.load(Ordering::Relaxed) || self.shared.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(sweep(shared));
    }

    /// Runs one sweep now, for tests.
    #[cfg(test)]
    fn sweep_now(&self) {
        sweep_once(&mut self.shared.replicas.lock().expect("no code panics holding the pool's lock"));
    }

    /// How many idle connections the pool holds to `uri`'s replica, for tests.
    #[cfg(test)]
    fn held(&self, uri: &str) -> usize {
        let uri: Uri = uri.parse().expect("a test URI");
        let key = (uri.scheme().expect("scheme").clone(), uri.authority().expect("authority").clone());
        let replicas = self.shared.replicas.lock().expect("no code panics holding the pool's lock");
        replicas.iter().find(|c| c.key == key).map_or(0, |c| c.idle.len())
    }
}

impl Shared {
    /// Puts an idle connection back on top, if there is room.
    fn checkin(&self, key: &Key, mut conn: Box<Conn>) {
        conn.idle_sweeps = 0;
        let mut replicas = self.replicas.lock().expect("no code panics holding the pool's lock");
        let index = match replicas.iter().position(|c| same_key(&c.key, &key.0, &key.1)) {
            Some(index) => index,
            None => {
                replicas.push(Connections { key: key.clone(), idle: Vec::new() });
                replicas.len() - 1
            }
        };
        let connections = &mut replicas[index];
        if connections.idle.len() < self.max_per_replica {
            connections.idle.push(conn);
        }
    }
}

/// An answer's body, read from its connection as the client takes it. Once it is read whole,
/// the connection goes back to the pool it came from.
pub struct Body {
    /// The answer's header lines, when they were kept as bytes (until the listener writes
    /// them or they are put in the answer's map). Boxed: the body is moved several times on
    /// its way to the listener, and a pointer moves cheaper than the lines.
    lines: Option<Box<HeaderLines>>,
    /// The connection, until the body is complete (or failed).
    conn: Option<Box<Conn>>,
    decoder: Decoder,
    keep_alive: bool,
    home: Weak<Shared>,
    key: Key,
}

impl CarriesLines for Body {
    fn lines_mut(&mut self) -> Option<&mut HeaderLines> {
        self.lines.as_deref_mut()
    }

    fn take_lines(&mut self) -> Option<HeaderLines> {
        self.lines.take().map(|lines| *lines)
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").field("decoder", &self.decoder).field("keep_alive", &self.keep_alive).finish()
    }
}

impl Body {
    /// Once the body is complete, gives its connection back to the pool, if the replica
    /// keeps it open and sent nothing beyond the answer.
    fn finish_if_done(&mut self) {
        if !self.decoder.is_done() {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive
            && conn.read.is_empty()
            && let Some(shared) = self.home.upgrade()
        {
            shared.checkin(&self.key, conn);
        }
    }

    /// Fails the body: its connection is closed.
    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.decoder = Decoder::Done;
        Poll::Ready(Some(Err(error)))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.decoder.decode(&mut conn.read) {
                Err(e) => return this.fail(e.into()),
                Ok(Decoded::Data(data)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
            }
            conn.read.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Ready(Ok(0)) if this.decoder == Decoder::UntilClose => {
                    // The close ends this body, and the connection with it.
                    this.conn = None;
                    this.decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(http1::ProtocolError::Incomplete.into()),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// How an exchange failed: the error, and whether the replica had answered nothing at all
/// (not a byte) when it did.
struct Failed {
    error: BoxError,
    unanswered: bool,
}

/// Writes `request` on `conn` and reads the answer's head; and whether the body was written
/// whole (a replica may answer before it has read a large body: an error, typically, after
/// which it closes). A write that fails still yields the answer when its head had arrived.
async fn exchange(conn: &mut Conn, request: &Outgoing<'_>) -> Result<(http1::response::Head, bool), Failed> {
    let Outgoing { method, target, headers, added, body, keep_lines, .. } = *request;
    conn.write.clear();
    http1::request::write_head(&mut conn.write, method, &target, headers, added, &conn.host, body.len());
    let inline = body.len() <= INLINE_BODY;
    if inline {
        conn.write.extend_from_slice(body);
    }
    let mut written = conn.io.write_all(&conn.write).await;
    if conn.write.capacity() > KEEP_WRITE_BUFFER {
        conn.write = Vec::new();
    }
    let mut body_whole = true;
    if written.is_ok() && !inline {
        match write_watching(conn, body).await {
            Ok(whole) => body_whole = whole,
            Err(e) => written = Err(e),
        }
    }
    if written.is_ok() {
        written = conn.io.flush().await;
    }
    if let Err(e) = written {
        // The answer may be in already (sent before the replica closed on the unread body).
        let _ = std::future::poll_fn(|cx| {
            conn.read.reserve(READ_CHUNK);
            Poll::Ready(tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read))
        })
        .await;
        return match http1::response::parse_head_as(&mut conn.read, method, keep_lines) {
            Ok(Some(head)) => Ok((head, false)),
            _ => Err(Failed { unanswered: conn.read.is_empty(), error: e.into() }),
        };
    }
    loop {
        match http1::response::parse_head_as(&mut conn.read, method, keep_lines) {
            Ok(Some(head)) => return Ok((head, body_whole)),
            Ok(None) => {}
            Err(e) => return Err(Failed { error: e.into(), unanswered: false }),
        }
        conn.read.reserve(READ_CHUNK);
        let unanswered = conn.read.is_empty();
        match conn.io.read_buf(&mut conn.read).await {
            Ok(0) => {
                let error = "the replica closed the connection before it answered".into();
                return Err(Failed { error, unanswered });
            }
            Ok(_) => {}
            Err(e) => return Err(Failed { error: e.into(), unanswered }),
        }
    }
}

/// Writes a large body, watching for an answer whenever the replica stops reading: `false`
/// when one arrived before the body was written whole.
async fn write_watching(conn: &mut Conn, body: &[u8]) -> std::io::Result<bool> {
    let mut sent = 0;
    std::future::poll_fn(|cx| {
        loop {
            if sent == body.len() {
                return Poll::Ready(Ok(true));
            }
            match Pin::new(&mut conn.io).poll_write(cx, &body[sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    conn.read.reserve(READ_CHUNK);
                    return match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read) {
                        Poll::Ready(Ok(0)) => Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the replica closed the connection while the request was written",
                        ))),
                        Poll::Ready(Ok(_)) => Poll::Ready(Ok(false)),
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    })
    .await
}

/// Closes idle connections past [`IDLE_TIMEOUT`] and forgets replicas with none, until the
/// pool is dropped.
async fn sweep(shared: Weak<Shared>) {
    let mut interval = tokio::time::interval_at(Instant::now() + SWEEP_INTERVAL, SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        sweep_once(&mut shared.replicas.lock().expect("no code panics holding the pool's lock"));
    }
}

/// One look at every idle connection: one the replica closed goes, any other counts one more
/// sweep and goes at [`IDLE_SWEEPS`].
fn sweep_once(replicas: &mut Vec<Connections>) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    replicas.retain_mut(|connections| {
        connections.idle.retain_mut(|conn| {
            conn.idle_sweeps += 1;
            conn.idle_sweeps < IDLE_SWEEPS && conn.poll_usable(&mut cx)
        });
        !connections.idle.is_empty()
    });
}

/// The `Host` header for a replica: its authority without its scheme's default port, as the
/// legacy client sends it.
fn host(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let text = match authority.port_u16() {
        Some(port) if port == default_port => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(text).expect("an authority is a valid header value")
}

#[cfg(test)]
mod tests;

//! The listener: accepts connections (HTTP/1.1, and HTTP/2 for clients that speak it in
//! clear text or choose it by ALPN over TLS), checks each request's head, hands `/mpp/` to
//! the admin paths and everything else to the proxy, and on shutdown stops accepting and lets
//! in-flight requests finish within a grace period. Every phase of a connection has a
//! deadline ([`connection`]). With a web config file, [`Web`] decides each connection's TLS
//! and each request's admission and extra headers.
//!
//! Connections are served by threads of their own: the accepting task hands each new
//! connection, in turn, to one of the serving threads (`--serving-threads`), each running its own
//! single-threaded runtime with its own [`Proxy`] (and so its own pool of backend
//! connections). A request and the backend connection it uses then live on one thread from
//! start to end: no work stealing and no cross-thread wake-ups. What the threads share is
//! atomics (metrics, health, budgets) and the source-IP affinity table's mutex, held for a
//! map lookup and never across an `.await`.

pub mod connection;
pub mod head;
pub mod http1;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future;
use http_body_util::Either;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::admin::Admin;
use crate::body::BoxError;
use crate::metrics::Metrics;
use crate::proxy::{ClientBody, Proxy};
use crate::via::Pseudonym;
use crate::web::Web;
use connection::{Activity, Answer, Deadlines, Metered, Pressure};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
/// The largest request head (request line and headers) by default (`--max-header-bytes`);
/// larger ones get 431. nginx takes 32 KiB, HAProxy 16 KiB, Prometheus (Go) 1 MB; long
/// queries go as form POSTs (Grafana's and promtool's default), whose bodies do not count.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// What unfinished request heads may hold together by default (`--request-head-budget`).
pub const DEFAULT_HEAD_BUDGET: usize = 64 << 20;
pub use crate::http1::request::MAX_HEADERS;

/// Streams an HTTP/2 client may cancel before mpp takes them up, at any one time.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams mpp may reset on one HTTP/2 connection for the client's errors.
const H2_MAX_LOCAL_RESETS: usize = 1024;

/// TCP keepalive on client connections: a peer that vanished without a word (a crashed
/// host, a dropped NAT entry) is noticed within about two minutes.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_PROBES: u32 = 6;

/// What one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The connection deadlines.
    pub deadlines: Deadlines,
    /// The most connections served at once; more wait in the kernel's listen queue.
    pub max_connections: u32,
    /// The most HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
}

/// What every serving thread shares, besides its own proxy.
#[derive(Clone)]
pub struct Shared {
    /// The web config file's TLS, basic auth and headers, when one is given.
    pub web: Option<Arc<Web>>,
    /// The admin paths.
    pub admin: Admin,
    /// Where connection closes are counted.
    pub metrics: Arc<Metrics>,
    /// This mpp's `Via` pseudonym.
    pub pseudonym: Pseudonym,
    /// The limits.
    pub limits: Limits,
    /// What request heads may take, each and together.
    pub heads: http1::HeadLimits,
}

/// A connection on its way from the accepting task to a worker, with its slot under
/// [`Limits::max_connections`].
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

/// One serving thread: where to send it connections, and how to learn it has drained.
struct Worker {
    connections: mpsc::UnboundedSender<Accepted>,
    drained: oneshot::Receiver<()>,
}

/// The next connection on any of `listeners`, asking `first` first (and the next one first
/// next time).
async fn accept(listeners: &[TcpListener], first: &mut usize) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for n in 0..listeners.len() {
            let at = (*first + n) % listeners.len();
            if let std::task::Poll::Ready(accepted) = listeners[at].poll_accept(cx) {
                *first = (at + 1) % listeners.len();
                return std::task::Poll::Ready(accepted);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Serves until `shutdown` completes, then drains. `proxies` holds one proxy per serving
/// thread (each with its own backend client); there is at least one.
pub async fn serve(
    listeners: Vec<TcpListener>,
    proxies: Vec<Proxy>,
    shared: Shared,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let max = shared.limits.max_connections as usize;
    let slots = Arc::new(Semaphore::new(max));
    let pressure = Pressure::new(slots.clone(), max);
    let mut workers = Vec::with_capacity(proxies.len());
    for (index, proxy) in proxies.into_iter().enumerate() {
        workers.push(Worker::start(index, proxy, shared.clone(), pressure.clone())?);
    }
    anyhow::ensure!(!workers.is_empty(), "no serving thread to hand connections to");
    anyhow::ensure!(!listeners.is_empty(), "no address to listen on");
    let mut next = 0;
    // The listener asked first, in turn, so that a busy one cannot starve the others.
    let mut first = 0;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = accept(&listeners, &mut first) => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        // Leaves this runtime's reactor (and stays non-blocking) for the worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "cannot hand over a connection");
                continue;
            }
        };
        let accepted = Accepted { stream, peer, slot };
        if workers[next].connections.send(accepted).is_err() {
            tracing::error!(worker = next, "a serving thread has stopped; shutting down");
            break;
        }
        next = (next + 1) % workers.len();
    }
    drop(listeners);
    tracing::info!(grace_period = ?GRACE_PERIOD, "shutting down; letting in-flight requests finish");
    // Closing their channels tells the workers to drain; then wait for each.
    let (channels, drained): (Vec<_>, Vec<_>) = workers.into_iter().map(|w| (w.connections, w.drained)).unzip();
    drop(channels);
    for done in drained {
        let _ = done.await;
    }
    Ok(())
}

impl Worker {
    /// Starts serving thread `index`; it serves what it is sent until the sender is dropped,
    /// then drains its connections.
    fn start(index: usize, proxy: Proxy, shared: Shared, pressure: Pressure) -> anyhow::Result<Worker> {
        let (connections, incoming) = mpsc::unbounded_channel();
        let (done, drained) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a serving thread's runtime")?;
        std::thread::Builder::new()
            .name(format!("mpp-worker-{index}"))
            .spawn(move || {
                runtime.block_on(serve_connections(incoming, proxy, shared, pressure));
                let _ = done.send(());
            })
            .context("cannot start a serving thread")?;
        Ok(Worker { connections, drained })
    }
}

/// One worker's loop: serves every connection it is handed, and once the accepting task
/// has stopped, gives in-flight requests [`GRACE_PERIOD`] to finish.
async fn serve_connections(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    proxy: Proxy,
    shared: Shared,
    pressure: Pressure,
) {
    let limits = shared.limits;
    // HTTP/1 is served by mpp's own loop (`http1`); HTTP/2 by hyper.
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.heads.max).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): a client that cancels more streams than this before
        // they are taken up, or makes mpp reset more than this many, loses its connection
        // (GOAWAY with ENHANCE_YOUR_CALM). h2's own figures, named here as mpp's.
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .keep_alive_interval(connection::H2_PING_INTERVAL)
        .keep_alive_timeout(connection::H2_PING_TIMEOUT);
    let http2 = Arc::new(http2);
    let (shutdown, shutting_down) = watch::channel(false);
    // Each connection task holds a clone; `recv` returns `None` once all have ended.
    let (active, mut all_ended) = mpsc::channel::<()>(1);
    while let Some(Accepted { stream, peer, slot }) = incoming.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "cannot take over a connection");
                continue;
            }
        };
        let connection = Connection {
            activity: Activity::new(),
            proxy: proxy.clone(),
            shared: shared.clone(),
            pressure: pressure.clone(),
            shutting_down: shutting_down.clone(),
            peer,
        };
        let active = active.clone();
        match shared.web.as_ref().and_then(|web| web.acceptor()) {
            None => {
                let http2 = http2.clone();
                tokio::spawn(async move {
                    connection.serve(stream, http2, Protocol::Detect, false).await;
                    drop((slot, active));
                });
            }
            Some(acceptor) => {
                let http2 = http2.clone();
                tokio::spawn(async move {
                    // The handshake is part of "from accept to the first request".
                    match tokio::time::timeout(limits.deadlines.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            // Over TLS, the protocol is the one ALPN chose (HTTP/1.1 when the
                            // web config turns HTTP/2 off), not what the first bytes look like.
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            let protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
                            connection.serve(stream, http2, protocol, true).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake not done within --header-read-timeout"),
                    }
                    drop((slot, active));
                });
            }
        }
    }
    let _ = shutdown.send(true);
    drop(active);
    if tokio::time::timeout(GRACE_PERIOD, all_ended.recv()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// One accepted connection, plain or TLS, and what serving it needs.
struct Connection {
    /// Made at accept, so that a TLS handshake counts towards the first request's deadline.
    activity: Arc<Activity>,
    proxy: Proxy,
    shared: Shared,
    pressure: Pressure,
    shutting_down: watch::Receiver<bool>,
    peer: SocketAddr,
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
    /// Clear text: HTTP/2 if it starts with the preface, else HTTP/1.
    Detect,
}

impl Connection {
    /// Serves `io` until it ends, held to its deadlines by [`connection::watch`].
    async fn serve<I>(self, io: I, http2: Arc<http2::Builder<TokioExecutor>>, protocol: Protocol, tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let Connection { activity, proxy, shared, pressure, shutting_down, peer } = self;
        let limits = shared.limits;
        let metrics = shared.metrics.clone();
        let control = Arc::new(http1::Control::new(shared.heads.clone()));
        let handler = Arc::new(Handler { proxy, shared, activity: activity.clone(), peer, tls });
        let io: Box<dyn http1::Io> = Box::new(Metered::new(io, activity.clone()));
        let serving = {
            let control = control.clone();
            async move {
                let mut reader = http1::Reader::new(io);
                let h2 = match protocol {
                    Protocol::Http1 => false,
                    Protocol::Http2 => true,
                    Protocol::Detect => match http1::detect_http2(&mut reader, &control).await {
                        http1::Http2Preface::Yes => true,
                        http1::Http2Preface::No => false,
                        http1::Http2Preface::Closed => return Ok(()),
                    },
                };
                if h2 {
                    serve_http2(&http2, http1::Prefixed::new(reader.into_parts()), handler, &control).await
                } else {
                    http1::serve(reader, &*handler, &control).await
                }
            }
        };
        let connection = http1::Watched::new(serving, control);
        let (closed_for, error) =
            connection::watch(connection, &activity, limits.deadlines, &pressure, shutting_down).await;
        if let Some(reason) = closed_for {
            metrics.connection_closed(reason.label());
            tracing::debug!(%peer, reason = reason.label(), "closed a connection");
        }
        if let Some(error) = error {
            tracing::debug!(%peer, error = %crate::error::error_chain(error.as_ref()), "connection ended with an error");
        }
    }
}

/// What serves a connection's requests, whichever protocol carries them.
struct Handler {
    proxy: Proxy,
    shared: Shared,
    activity: Arc<Activity>,
    peer: SocketAddr,
    tls: bool,
}

impl Handler {
    /// [`route`]'s answer (through [`respond`] with a web config), with the request in flight
    /// on the connection from the moment it arrived until its answer's body is sent.
    fn answer<B: ClientBody + Sync + 'static>(
        &self,
        request: http::Request<B>,
        http2: bool,
    ) -> impl Future<Output = http::Response<Answer<crate::error::ProxyBody>>> + Send + '_ {
        let in_flight = self.activity.begin(http2);
        async move {
            // Without a web config, nothing comes between the client and the route; the web
            // config's checks are a future of their own, boxed, so that the common path's
            // future does not carry (and copy on every request) room for them.
            let response = match &self.shared.web {
                None => route(&self.proxy, &self.shared, request, self.peer).await,
                Some(web) => Box::pin(respond(web, &self.proxy, &self.shared, request, self.peer, self.tls)).await,
            };
            response.map(|body| in_flight.answer(body))
        }
    }
}

impl http1::Service for Handler {
    type Body = Answer<crate::error::ProxyBody>;

    fn call(
        &self,
        request: http::Request<http1::RequestBody>,
    ) -> impl Future<Output = http::Response<Self::Body>> + Send {
        self.answer(request, false)
    }

    fn head_waiting(&self) {
        self.activity.bytes_arrived();
    }
}

/// Serves an HTTP/2 connection with hyper, until it ends or `control` asks it to close
/// (then it says GOAWAY and finishes its streams).
async fn serve_http2(
    builder: &http2::Builder<TokioExecutor>,
    io: http1::Prefixed,
    handler: Arc<Handler>,
    control: &http1::Control,
) -> Result<(), BoxError> {
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        async move {
            let mut answer = handler.answer(request, true).await;
            // hyper writes the answer from its map (requests over HTTP/2 never ask for kept
            // lines; this keeps it so should that change).
            crate::http1::lines::unpack(&mut answer);
            Ok::<_, Infallible>(answer)
        }
    });
    let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut asked = false;
    std::future::poll_fn(|cx| {
        if !asked && control.closing() {
            asked = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await
    .map_err(Into::into)
}

/// The answer to one request under `web`, the web config: its refusal (429, 401), or
/// [`route`]'s, with the web config's headers.
async fn respond<B: ClientBody>(
    web: &Web,
    proxy: &Proxy,
    shared: &Shared,
    mut request: http::Request<B>,
    peer: SocketAddr,
    tls: bool,
) -> http::Response<crate::error::ProxyBody> {
    let authorization_is_mpps = match web.admit(&request, peer.ip()).await {
        Ok(basic_auth) => basic_auth,
        Err(refusal) => {
            let mut refusal = refusal.map(Either::Right);
            web.decorate(&mut refusal);
            return refusal;
        }
    };
    if authorization_is_mpps {
        if proxy.logs_queries()
            && let Some(user) = crate::proxy::VerifiedUser::of(request.headers())
        {
            // For the query log: the user the web config admitted.
            request.extensions_mut().insert(user);
        }
        // The client's credentials were for mpp; they do not travel on to a replica.
        request.headers_mut().remove(http::header::AUTHORIZATION);
    }
    if tls {
        // The proxy then says `https` in `X-Forwarded-Proto`, unless a trusted proxy said more.
        request.extensions_mut().insert(crate::proxy::headers::ClientTls);
    }
    let mut response = route(proxy, shared, request, peer).await;
    web.decorate(&mut response);
    response
}

/// A refusal of the request's head, the admin paths, or the proxy's answer. Decided at once,
/// with the proxy's future returned as it is rather than awaited in one of this function's
/// own (see [`Proxy::handle`]).
fn route<B: ClientBody>(
    proxy: &Proxy,
    shared: &Shared,
    request: http::Request<B>,
    peer: SocketAddr,
) -> impl Future<Output = http::Response<crate::error::ProxyBody>> {
    let admin_path = request.uri().path().starts_with("/mpp/");
    if let Err(refusal) = head::check(&request, &shared.pseudonym, !admin_path) {
        return future::Either::Left(future::Either::Left(future::ready(proxy.refuse(refusal))));
    }
    if admin_path {
        return future::Either::Left(future::Either::Left(future::ready(
            shared.admin.handle(&request).map(Either::Right),
        )));
    }
    if proxy.observes() {
        // Boxed beside the answers decided at once, so that the common path's future is as
        // it is without the query log and tracing.
        let observed = Box::pin(proxy.handle_observed(request, peer.ip()));
        return future::Either::Left(future::Either::Right(observed));
    }
    future::Either::Right(proxy.handle(request, peer.ip()))
}

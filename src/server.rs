//! The listener: accepts connections (HTTP/1.1, and HTTP/2 for clients that speak it in
//! clear text), hands `/mpp/` to the admin paths and everything else to the proxy, and on
//! shutdown stops accepting and lets in-flight requests finish within a grace period.
//!
//! Connections are served thread-per-core: the accepting task hands each new connection, in
//! turn, to one of the serving threads (`--serving-threads`), each running its own single-threaded runtime
//! with its own [`Proxy`] (and so its own pool of backend connections). A request and the
//! backend connection it uses then live on one thread from start to end: no work stealing,
//! no cross-thread wake-ups, and no lock shared between workers on the way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::admin::Admin;
use crate::error::ProxyError;
use crate::proxy::Proxy;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
/// The largest request head (request line and headers); larger ones get 431. Prometheus
/// (Go's default) accepts 1 MB, so anything that works direct works through mpp.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// What one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request's headers (slowloris defence).
    pub header_read_timeout: Duration,
    /// The most connections served at once; more wait in the kernel's listen queue.
    pub max_connections: u32,
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

/// Serves until `shutdown` completes, then drains. `proxies` holds one proxy per serving
/// thread (each with its own backend client); there is at least one.
pub async fn serve(
    listener: TcpListener,
    proxies: Vec<Proxy>,
    admin: Admin,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut workers = Vec::with_capacity(proxies.len());
    for (index, proxy) in proxies.into_iter().enumerate() {
        workers.push(Worker::start(index, proxy, admin.clone(), limits)?);
    }
    anyhow::ensure!(!workers.is_empty(), "no serving thread to hand connections to");
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let mut next = 0;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
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
    drop(listener);
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
    fn start(index: usize, proxy: Proxy, admin: Admin, limits: Limits) -> anyhow::Result<Worker> {
        let (connections, incoming) = mpsc::unbounded_channel();
        let (done, drained) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a serving thread's runtime")?;
        std::thread::Builder::new()
            .name(format!("mpp-worker-{index}"))
            .spawn(move || {
                runtime.block_on(serve_connections(incoming, proxy, admin, limits));
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
    admin: Admin,
    limits: Limits,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
    while let Some(Accepted { stream, peer, slot }) = incoming.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%peer, %error, "cannot take over a connection");
                continue;
            }
        };
        let (proxy, admin) = (proxy.clone(), admin.clone());
        let service = service_fn(move |request| {
            let (proxy, admin) = (proxy.clone(), admin.clone());
            async move {
                let response = if let Some(problem) = framing_problem(&request) {
                    ProxyError::BadRequest(problem.into()).into_response()
                } else if request.uri().path().starts_with("/mpp/") {
                    admin.handle(&request).map(Either::Right)
                } else {
                    proxy.handle(request, peer.ip()).await
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %crate::error::error_chain(error.as_ref()), "connection ended with an error");
            }
            drop(slot);
        });
    }
    if tokio::time::timeout(GRACE_PERIOD, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// Request smuggling guard: a request with both `Content-Length` and `Transfer-Encoding` is
/// ambiguous (RFC 9112, section 6.1); hyper reads it as chunked, but a server behind a
/// proxy might not, so it is refused.
fn framing_problem<B>(request: &http::Request<B>) -> Option<&'static str> {
    let headers = request.headers();
    (headers.contains_key(http::header::CONTENT_LENGTH) && headers.contains_key(http::header::TRANSFER_ENCODING))
        .then_some("both Content-Length and Transfer-Encoding are set")
}

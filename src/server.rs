//! The listener: accepts connections (HTTP/1.1, and HTTP/2 for clients that speak it in
//! clear text), hands `/mpp/` to the admin paths and everything else to the proxy, and on
//! shutdown stops accepting and lets in-flight requests finish within a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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

/// Serves until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    admin: Admin,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
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
    drop(listener);
    tracing::info!(grace_period = ?GRACE_PERIOD, "shutting down; letting in-flight requests finish");
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

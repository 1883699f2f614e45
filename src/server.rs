//! The listener: accepts connections (HTTP/1.1, and HTTP/2 for clients that speak it in
//! clear text), hands `/mpp/` to the admin paths and everything else to the proxy, and on
//! shutdown stops accepting and lets in-flight requests finish within a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http_body_util::Either;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::proxy::Proxy;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until `shutdown` completes, then drains.
pub async fn serve(listener: TcpListener, proxy: Proxy, admin: Admin, shutdown: impl Future<Output = ()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
                let response = if request.uri().path().starts_with("/mpp/") {
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
        });
    }
    drop(listener);
    tracing::info!(grace_period = ?GRACE_PERIOD, "shutting down; letting in-flight requests finish");
    if tokio::time::timeout(GRACE_PERIOD, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

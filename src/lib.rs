//! mpp, the multi-Prometheus proxy: makes two or more identical Prometheus replicas look
//! like one server to every client.
//!
//! # Layout
//!
//! Data flows one way:
//!
//! ```text
//! discovery -> candidates -> probes + strategy -> Snapshot (one Arc, ArcSwap) -> proxy -> backend
//!              (selection: background task, owns all mutable state)      (request path)
//!                   ^--------------- "re-select now" (channel) ---------------'
//! ```
//!
//! - [`config`]: the command line (flags and `MPP_*` variables) into a validated [`Config`].
//! - [`discovery`]: where candidates come from (endpoints file, Marathon, Kubernetes).
//! - [`backend`]: one replica's URL and its opaque id.
//! - [`probe`]: asking one replica how it is (and the exposition-format parser).
//! - [`strategy`]: `single-most-data`, `minimum-history`, `random`: probes to a selection.
//! - [`selection`]: the background loop that publishes the [`selection::Snapshot`].
//! - [`liveness`]: the one-second `/-/ready` check that takes dead or hung replicas out.
//! - [`proxy`]: the request path: affinity, attempts, retries, header rewriting.
//! - [`admin`]: `/mpp/health`, `/mpp/metrics`, `/mpp/status`.
//! - [`metrics`]: every exported metric.
//! - [`error`]: error kinds, retryability and the one mapping to HTTP answers.
//! - [`client`]: the pooled http/https client to the replicas.
//! - [`server`]: accepting connections, serving them on one thread per CPU, draining on shutdown.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod client;
pub mod config;
pub mod discovery;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod selection;
pub mod server;
pub mod strategy;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use config::Config;

/// Runs mpp on `listener` until `shutdown` completes, then drains in-flight requests.
/// Fails only when it cannot start (the endpoints file is missing, say).
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let started = SystemTime::now();
    // kube builds its TLS from rustls' process-wide provider; make it `ring`, the one in use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(metrics::Metrics::new());
    let snapshot = Arc::new(ArcSwap::from_pointee(selection::Snapshot::empty()));
    let backend_client = || client::build(config.insecure).context("cannot set up the backend client");
    let client = backend_client()?;
    // Capacity 1: signals that arrive while a round is already due collapse into it.
    let (reselect, reselect_rx) = mpsc::channel(1);
    let discovery = discovery::Discovery::start(&config.discovery, &client, reselect.clone()).await?;
    let facts = admin::Facts {
        started,
        strategy: config.strategy,
        interval: config.selection_interval,
        affinity: config.affinity,
        discovery: discovery.describe(),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().context("the listener has no address")?,
        discovery = %facts.discovery,
        strategy = %config.strategy,
        interval = ?config.selection_interval,
        liveness_interval = ?config.liveness_interval,
        max_connections = config.max_connections,
        serving_threads = config.serving_threads,
        affinity = %config.affinity,
        max_request_body = config.max_request_body,
        insecure = config.insecure,
        "mpp starting"
    );
    let prober = probe::Prober::new(client.clone(), config.strategy.history_needed());
    let mut selector = selection::Selector::new(
        discovery,
        prober,
        config.strategy,
        config.selection_interval,
        snapshot.clone(),
        metrics.clone(),
    );
    // One round before serving, so that the first request already has a selection.
    selector.round().await;
    let selection = tokio::spawn(selector.run(reselect_rx));
    let liveness = tokio::spawn(liveness::run(
        snapshot.clone(),
        probe::Prober::new(client.clone(), None),
        config.liveness_interval,
        reselect.clone(),
    ));
    // One proxy per serving thread, each with its own backend client, so that a thread's
    // requests only ever use connections that thread drives (the probes keep `client`).
    let proxy = proxy::Proxy::new(proxy::ProxySettings {
        client: backend_client()?,
        snapshot: snapshot.clone(),
        metrics: metrics.clone(),
        affinity: config.affinity,
        reselect,
        max_body: config.max_request_body,
    });
    let mut proxies = vec![proxy.clone()];
    for _ in 1..config.serving_threads {
        proxies.push(proxy.with_client(backend_client()?));
    }
    let admin = admin::Admin::new(snapshot, metrics, facts);
    let limits =
        server::Limits { header_read_timeout: config.header_read_timeout, max_connections: config.max_connections };
    let served = server::serve(listener, proxies, admin, limits, shutdown).await;
    selection.abort();
    liveness.abort();
    served
}

/// Binds the listening socket for `config`. For the default address (`[::]`), falls back to
/// `0.0.0.0` where IPv6 is unavailable.
pub async fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(config.listen).await {
        Ok(listener) => Ok(listener),
        Err(e) if config.listen.ip().is_unspecified() && config.listen.is_ipv6() => {
            tracing::debug!(error = %e, "IPv6 unavailable; listening on IPv4 only");
            let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], config.listen.port()));
            TcpListener::bind(v4).await.with_context(|| format!("cannot listen on {v4}"))
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {}", config.listen)),
    }
}

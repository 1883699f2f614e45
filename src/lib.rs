//! mpp, the multi-Prometheus proxy: makes two or more identical Prometheus replicas look
//! like one server to every client.
//!
//! # Layout
//!
//! Data flows one way:
//!
//! ```text
//! discovery -> candidates -> registry -> probes + strategy -> Snapshot (one Arc, ArcSwap) -> proxy -> replica
//!               selection: background task, owns the registry       request path: loads the snapshot
//!                   ^------------------- "re-select now" (channel) --------------------'
//! ```
//!
//! The modules, from the bottom of the dependency graph up (`scripts/module-graph.py` prints
//! it and fails on a cycle):
//!
//! - [`units`]: durations in Go's syntax and byte sizes. [`system`]: the process's memory and
//!   open-files limits. [`reload`]: the loop that rereads changed files. [`via`]: this mpp's
//!   `Via` pseudonym. [`body`]: a response body that holds a slot until it is sent, and the
//!   one `BoxError`. [`metrics`]: every exported metric.
//! - [`backend`]: one replica's identity, its URL and opaque id (plain data).
//! - [`client`]: the http/https clients to the replicas (CA, client certificate, server
//!   name): hyper-util's pooled one for probes and discovery, and `client::pool`, each
//!   serving thread's own connections for proxied requests. [`credentials`]: the `Authorization` sent to them, from files read again.
//! - [`error`]: what can go wrong with a request, and the one mapping to HTTP answers.
//! - [`discovery`]: where candidates come from (endpoints file, Marathon, Kubernetes); each
//!   kind validates its own flags.
//! - [`probe`]: asking one replica how it is (and the exposition-format parser).
//! - [`strategy`]: `single-most-data`, `minimum-history`, `random`: probes to a selection.
//! - [`window`]: the window of stored data an API request reads (PromQL parsed with
//!   `promql-parser`). [`merge`]: merging API answers from several replicas.
//! - [`coverage`]: which stretches of time each replica holds complete data for (its holes),
//!   and the tracker that builds and keeps that map from the replicas' own data.
//! - [`registry`]: every replica's live state (health, metric handles, connection slots,
//!   coverage), owned by the selection loop; a replica's state and series go when it leaves.
//! - [`selection`]: the loop that gathers (discovery, probes), decides (a pure function,
//!   which also ejects replicas whose ingestion stalls or lags) and publishes the
//!   [`selection::Snapshot`].
//! - [`liveness`]: the one-second `/-/ready` check that takes dead or hung replicas out.
//! - [`proxy`]: the request path: body limits, affinity, routing by coverage and merging
//!   (`proxy::route`), the retry policy (`proxy::retry`, all of it), header rewriting
//!   (`proxy::headers`).
//! - [`admin`]: `/mpp/health`, `/mpp/ready`, `/mpp/metrics`, `/mpp/status`.
//! - [`web`]: the listener's TLS, basic auth and headers, from the web config file.
//! - [`server`]: accepting connections, serving them on one thread per CPU, each connection
//!   held to its deadlines, request heads checked, draining on shutdown.
//! - [`config`]: the command line (flags and `MPP_*` variables) into a validated [`Config`].
//!
//! The public surface is [`run`], [`bind`], [`Config`] and [`Args`] (for `main`), and
//! [`fuzzing`] (the parsers, for the fuzz targets and tests); everything else is
//! `pub(crate)`.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod backend;
pub(crate) mod body;
pub(crate) mod client;
pub mod config;
pub(crate) mod coverage;
pub(crate) mod credentials;
pub(crate) mod discovery;
pub(crate) mod error;
pub(crate) mod liveness;
pub(crate) mod merge;
pub(crate) mod metrics;
pub(crate) mod probe;
pub(crate) mod proxy;
pub(crate) mod registry;
pub(crate) mod reload;
pub(crate) mod selection;
pub(crate) mod server;
pub(crate) mod strategy;
pub(crate) mod system;
pub(crate) mod units;
pub(crate) mod via;
pub(crate) mod web;
pub(crate) mod window;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

pub use config::{Args, Config};

/// The parsers of input from outside the process, and the types they produce, for the fuzz
/// targets in `fuzz/` and the integration tests. Not a stable interface: it follows the code.
pub mod fuzzing {
    pub use crate::backend::Backend;
    pub use crate::client::http1::{Decoded, Decoder, parse_head};
    pub use crate::coverage::{Coverage, Span, holes_in_buckets};
    pub use crate::discovery::{
        LabelSelector, PortRef, PrincipalSecret, candidates_from_tasks, parse_endpoints, pod_backend, slice_backends,
    };
    pub use crate::merge::{Part, add_warning, merge};
    pub use crate::probe::{SAMPLES_METRIC, exposition, query_has_result};
    pub use crate::proxy::affinity::{AffinityOptions, route_cookie};
    pub use crate::proxy::client_ip::TrustedProxies;
    pub use crate::proxy::headers;
    pub use crate::server::head;
    pub use crate::server::http1::parse_request_head;
    pub use crate::strategy::Strategy;
    pub use crate::units::{format_duration, parse_duration, parse_size};
    pub use crate::via::Pseudonym;
    pub use crate::web::{Web, WebConfig};
    pub use crate::window::{Endpoint, Read, Steps, Window, expr_window, pin_start_end, read_window, step_reads};
}

/// At start-up, how often the first rounds are retried while discovery has not answered
/// (besides whenever it signals a change).
const STARTUP_RETRY: Duration = Duration::from_millis(200);
/// How long start-up waits for the first coverage scan.
const COVERAGE_STARTUP_PATIENCE: Duration = Duration::from_secs(5);

/// Runs mpp on `listener` until `shutdown` completes, then drains in-flight requests.
/// Fails only when it cannot start (the endpoints file is missing, say).
///
/// Connections are accepted only once discovery has given its first complete answer and a
/// selection round has run on it (at most `--startup-timeout`): clients that connect
/// earlier wait in the listen queue instead of getting errors.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let started = SystemTime::now();
    // kube builds its TLS from rustls' process-wide provider; make it `ring`, the one in use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    system::raise_open_files(config.max_connections);
    let metrics = Arc::new(metrics::Metrics::new());
    let snapshot = Arc::new(ArcSwap::from_pointee(selection::Snapshot::empty()));
    let pseudonym = via::Pseudonym::random();
    let web = match &config.web_config_file {
        Some(file) => Some(Arc::new(web::Web::load(file, config.web_health_without_auth)?)),
        None => None,
    };
    let credentials = match &config.backend_credentials {
        Some(source) => {
            Some(Arc::new(credentials::Credentials::load(source.clone(), config.backend_replace_authorization)?))
        }
        None => None,
    };
    let backend_client = || {
        client::build_with(&config.backend_tls, config.max_backend_connections)
            .context("cannot set up the backend client")
    };
    let client = backend_client()?;
    // Discovery (Marathon, the DC/OS login) is not a replica: no replica credentials for it.
    let discovery_client =
        client::build(config.insecure, config.max_backend_connections).context("cannot set up the discovery client")?;
    // Capacity 1: signals that arrive while a round is already due collapse into it.
    let (reselect, mut reselect_rx) = mpsc::channel(1);
    let discovery = discovery::Discovery::start(&config.discovery, &discovery_client, reselect.clone()).await?;
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
        request_body_budget = config.request_body_budget,
        request_timeout = ?config.request_timeout,
        insecure = config.insecure,
        web_config = web.as_ref().map_or_else(|| "none".into(), |web| web.describe()),
        backend_credentials = credentials.as_ref().map_or_else(|| "none".into(), |c| c.describe()),
        "mpp starting"
    );
    let via = pseudonym.via().clone();
    let prober = probe::Prober::new(client.clone(), config.strategy.history_needed(), via.clone())
        .with_credentials(credentials.clone());
    let mut selector = selection::Selector::new(
        selection::Sources { discovery, prober },
        registry::Registry::new(metrics.clone(), config.max_backend_connections),
        config.strategy,
        config.selection_interval,
        snapshot.clone(),
        metrics.clone(),
    )
    .with_rules(selection::DataRules { max_lag: config.data_lag_threshold });
    tokio::pin!(shutdown);
    let startup = tokio::time::Instant::now();
    selector.round().await;
    while !selector.settled() {
        if startup.elapsed() >= config.startup_timeout {
            tracing::warn!(
                waited = ?config.startup_timeout,
                "discovery has not answered yet (--startup-timeout); accepting connections anyway"
            );
            break;
        }
        tokio::select! {
            _ = reselect_rx.recv() => {}
            () = tokio::time::sleep(STARTUP_RETRY) => {}
            () = &mut shutdown => return Ok(()),
        }
        selector.round().await;
    }
    // Dropped (and so aborted) with this function, whichever way it returns.
    let mut background = JoinSet::new();
    background.spawn(selector.run(reselect_rx));
    if config.coverage_routing {
        let prober = probe::Prober::new(client.clone(), None, via.clone()).with_credentials(credentials.clone());
        let tracker =
            coverage::tracker::Tracker::new(prober, snapshot.clone(), metrics.clone(), config.coverage_bucket);
        // The first scan, so that the first queries already avoid holes that are in the past
        // (mpp restarted long after a replica's outage); waited for a bounded time only, since
        // a long retention takes a while and the map is only an improvement: the scan goes on.
        let (first, first_done) = tokio::sync::oneshot::channel();
        background.spawn(tracker.run(config.liveness_interval, first));
        if tokio::time::timeout(COVERAGE_STARTUP_PATIENCE, first_done).await.is_err() {
            tracing::warn!(waited = ?COVERAGE_STARTUP_PATIENCE, "the first coverage scan is not done; serving meanwhile");
        }
    }
    background.spawn(liveness::run(
        snapshot.clone(),
        probe::Prober::new(client.clone(), None, via).with_credentials(credentials.clone()),
        config.liveness_interval,
        reselect.clone(),
    ));
    let body = proxy::body::BodyLimits {
        max: config.max_request_body,
        min_rate: config.request_body_min_rate,
        grace: config.header_read_timeout,
        budget: Arc::new(Semaphore::new(usize::try_from(config.request_body_budget).unwrap_or(usize::MAX >> 4))),
        budget_bytes: config.request_body_budget,
    };
    // One proxy per serving thread, each with its own pool, so that a thread's requests only
    // ever use connections that thread drives (the probes keep `client`).
    let backend_pool = || -> anyhow::Result<client::pool::Pool> {
        let connector = client::connector(&config.backend_tls).context("cannot set up the backend client")?;
        Ok(client::pool::Pool::new(connector, config.max_backend_connections))
    };
    let proxy = proxy::Proxy::new(proxy::ProxySettings {
        pool: backend_pool()?,
        snapshot: snapshot.clone(),
        metrics: metrics.clone(),
        affinity: config.affinity,
        reselect,
        body,
        request_timeout: config.request_timeout,
        max_backend_connections: config.max_backend_connections,
        pseudonym: pseudonym.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        credentials: credentials.clone(),
        coverage_routing: config.coverage_routing,
        merge_max_bytes: config.merge_max_bytes,
    });
    let mut proxies = vec![proxy.clone()];
    for _ in 1..config.serving_threads {
        proxies.push(proxy.with_pool(backend_pool()?));
    }
    if let Some(web) = &web {
        background.spawn(web.clone().watch(metrics.web_config_last_reload_successful.clone()));
    }
    if let Some(credentials) = credentials {
        background.spawn(credentials.watch());
    }
    let shared = server::Shared {
        web,
        admin: admin::Admin::new(snapshot, metrics.clone(), facts),
        metrics,
        pseudonym,
        limits: server::Limits {
            deadlines: server::connection::Deadlines {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
            },
            max_connections: config.max_connections,
            max_concurrent_streams: config.max_concurrent_streams,
        },
    };
    let served = server::serve(listener, proxies, shared, shutdown).await;
    background.shutdown().await;
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

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
//! it and fails on a cycle; `make lint` runs it):
//!
//! - [`units`]: durations in Go's syntax and byte sizes. [`system`]: the process's memory and
//!   open-files limits. [`reload`]: the loop that rereads changed files. [`via`]: this mpp's
//!   `Via` pseudonym. [`body`]: a response body that holds a slot until it is sent, and the
//!   one `BoxError`. [`metrics`]: every exported metric.
//! - [`backend`]: one replica's identity, its URL and opaque id (plain data).
//! - [`http1`]: HTTP/1.1 on the wire for both sides (request and answer heads written and
//!   parsed, bodies framed and decoded): pure functions over buffers.
//! - [`client`]: the http/https clients to the replicas (CA, client certificate, server
//!   name): hyper-util's pooled one for probes and discovery, and `client::pool`, each
//!   serving thread's own connections for proxied requests. [`credentials`]: the `Authorization` sent to them, from files read again.
//! - [`error`]: what can go wrong with a request, and the one mapping to HTTP answers.
//! - [`discovery`]: where candidates come from (endpoints file, DNS, Marathon, Kubernetes); each
//!   kind, in its own file, declares its flags, validates them and describes itself.
//! - [`probe`]: asking one replica how it is (and the exposition-format parser).
//! - [`strategy`]: `single-most-data`, `minimum-history`, `random`: probes to a selection.
//! - [`api`]: the paths of Prometheus's HTTP API that mpp treats apart, named once per request
//!   from the path's last segment.
//! - [`window`]: the window of stored data an API request reads (PromQL parsed with
//!   `promql-parser`). [`merge`]: merging API answers from several replicas.
//! - [`coverage`]: which stretches of time each replica holds complete data for (its holes;
//!   plain data).
//! - [`registry`]: every replica's live state (health, metric handles, connection slots,
//!   coverage), owned by the selection loop; a replica's state and series go when it leaves.
//! - [`selection`]: the loop that gathers (discovery, probes), decides (a pure function,
//!   which also ejects replicas whose ingestion stalls or lags) and publishes the
//!   [`selection::Snapshot`].
//! - [`tracker`]: the background task that builds and keeps each replica's coverage from the
//!   replicas' own data, reading the snapshot and writing into the registry.
//! - [`liveness`]: the one-second `/-/ready` check that takes dead or hung replicas out.
//! - [`proxy`]: the request path: body limits, affinity, routing by coverage and merging
//!   (`proxy::route`), the retry policy (`proxy::retry`, all of it), header rewriting
//!   (`proxy::headers`).
//! - [`logging`]: `--log.level` and `--log.format` (logfmt, JSON) lines on standard error.
//! - [`admin`]: `/mpp/health`, `/mpp/ready`, `/mpp/metrics`, `/mpp/status`.
//! - [`web`]: the listener's TLS, basic auth and headers, from the web config file.
//! - [`server`]: accepting connections, serving them on one thread per CPU, each connection
//!   held to its deadlines, request heads checked, draining on shutdown.
//! - [`config`]: the command line (flags and `MPP_*` variables) into a validated [`Config`],
//!   grouped by who uses it (selection, proxy, server, coverage, backends); [`run`] only
//!   wires those groups to the parts they configure.
//!
//! The public surface is [`run`], [`bind`], [`Config`] and [`Args`] (for `main`), and
//! [`fuzzing`] (the parsers, for the fuzz targets and tests); everything else is
//! `pub(crate)`.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod backend;
pub(crate) mod body;
pub(crate) mod cache;
pub(crate) mod client;
pub mod config;
pub(crate) mod coverage;
pub(crate) mod credentials;
pub(crate) mod discovery;
pub(crate) mod error;
pub(crate) mod expiry;
pub(crate) mod http1;
pub(crate) mod liveness;
pub mod logging;
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
pub(crate) mod telemetry;
pub(crate) mod tracker;
pub(crate) mod units;
pub(crate) mod via;
pub(crate) mod web;
pub(crate) mod window;

use std::future::Future;
use std::pin::Pin;
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
    pub use crate::api::Api;
    pub use crate::backend::Backend;
    pub use crate::coverage::{Coverage, Span, holes_in_buckets};
    pub use crate::discovery::file::{Line, parse_endpoints};
    pub use crate::discovery::kubernetes::{LabelSelector, PortRef, pod_backend, slice_backends};
    pub use crate::discovery::marathon::{PrincipalSecret, candidates_from_tasks};
    pub use crate::http1::lines::{HeaderLines, unpack_into};
    pub use crate::http1::request::{HeadError, RequestHead, parse_request};
    pub use crate::http1::response::{Encoder, Plan, parse_head, parse_head_as, write_head};
    pub use crate::http1::{Decoded, Decoder, Framing, Role};
    pub use crate::merge::{Part, add_warning, merge};
    pub use crate::probe::{SAMPLES_METRIC, exposition, query_has_result};
    pub use crate::proxy::affinity::{AffinityOptions, route_cookie};
    pub use crate::proxy::client_ip::TrustedProxies;
    pub use crate::proxy::headers;
    pub use crate::server::DEFAULT_MAX_HEADER_BYTES;
    pub use crate::server::head;
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

/// Runs mpp on `listeners` until `shutdown` completes, then drains in-flight requests.
/// Fails only when it cannot start (the endpoints file is missing, say).
///
/// Connections are accepted only once discovery has given its first complete answer and a
/// selection round has run on it (at most `--startup-timeout`): clients that connect
/// earlier wait in the listen queue instead of getting errors.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = SystemTime::now();
    // At once: until it is installed, a SIGHUP (a configuration tool's, right after a deploy)
    // would end the process, as is its default.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // kube builds its TLS from rustls' process-wide provider; make it `ring`, the one in use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    system::raise_open_files(config.server.max_connections);
    let parts = Parts::new(&config)?;
    // Capacity 1: signals that arrive while a round is already due collapse into it.
    let (reselect, mut reselect_rx) = mpsc::channel(1);
    // Discovery (Marathon, the DC/OS login) is not a replica: no replica credentials for it.
    let discovery_client = client::build(config.backends.tls.insecure, config.backends.max_connections)
        .context("cannot set up the discovery client")?;
    let discovery =
        discovery::Discovery::start(&config.discovery, &discovery_client, reselect.clone(), &parts.metrics).await?;
    let facts = admin::Facts {
        started,
        strategy: config.selection.routing_strategy,
        interval: config.selection.selection_interval,
        affinity: config.proxy.affinity_options,
        discovery: discovery.describe(),
    };
    log_start(&config, &listeners, &facts, &parts)?;
    let mut selector = selection::Selector::new(
        selection::Sources { discovery, prober: parts.prober(config.selection.routing_strategy.history_needed()) },
        registry::Registry::new(parts.metrics.clone(), config.backends.max_connections),
        config.selection.routing_strategy,
        config.selection.selection_interval,
        parts.snapshot.clone(),
        parts.metrics.clone(),
    )
    .with_rules(selection::DataRules { max_lag: config.selection.data_lag_threshold });
    tokio::pin!(shutdown);
    if !settle(&mut selector, &mut reselect_rx, config.selection.startup_timeout, shutdown.as_mut()).await {
        return Ok(());
    }
    // Dropped (and so aborted) with this function, whichever way it returns.
    let mut background = JoinSet::new();
    background.spawn(selector.run(reselect_rx));
    if config.coverage.coverage_routing {
        let tracker = tracker::Tracker::new(
            parts.prober(None),
            parts.snapshot.clone(),
            parts.metrics.clone(),
            config.coverage.coverage_bucket.fixed(),
        );
        // The first scan, so that the first queries already avoid holes that are in the past
        // (mpp restarted long after a replica's outage); waited for a bounded time only, since
        // a long retention takes a while and the map is only an improvement: the scan goes on.
        let (first, first_done) = tokio::sync::oneshot::channel();
        background.spawn(tracker.run(config.selection.liveness_interval, first));
        if tokio::time::timeout(COVERAGE_STARTUP_PATIENCE, first_done).await.is_err() {
            tracing::warn!(waited = ?COVERAGE_STARTUP_PATIENCE, "the first coverage scan is not done; serving meanwhile");
        }
    }
    background.spawn(liveness::run(
        parts.snapshot.clone(),
        parts.prober(None),
        config.selection.liveness_interval,
        reselect.clone(),
    ));
    if let Some(web) = &parts.web {
        background.spawn(
            web.clone().watch(parts.metrics.web_config_last_reload_successful.clone(), parts.metrics.reloads.clone()),
        );
    }
    if let Some(credentials) = &parts.credentials {
        background.spawn(credentials.clone().watch(parts.metrics.reloads.clone()));
    }
    if parts.backend_tls.reads_files() {
        background.spawn(parts.backend_tls.clone().watch(parts.metrics.reloads.clone()));
    }
    match hangups {
        Ok(hangups) => {
            background.spawn(reload_on_sighup(hangups, parts.metrics.reloads.clone(), reselect.clone()));
        }
        Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP; files are still read again as they change"),
    }
    let (tracing, tracer) = match &config.tracing {
        Some(settings) => {
            let (tracing, tracer) = telemetry::Tracing::start(settings, parts.metrics.tracing.clone())
                .context("cannot set up tracing (--tracing-endpoint)")?;
            (Some(tracing), Some(tracer))
        }
        None => (None, None),
    };
    let proxies = proxies(&config, &parts, tracer, reselect)?;
    let shared = server::Shared {
        admin: admin::Admin::new(parts.snapshot, parts.metrics.clone(), facts, parts.cache.clone()),
        web: parts.web,
        metrics: parts.metrics,
        pseudonym: parts.pseudonym,
        limits: server::Limits {
            deadlines: server::connection::Deadlines {
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
            },
            max_connections: config.server.max_connections,
            max_concurrent_streams: config.server.max_concurrent_streams,
        },
        heads: server::http1::HeadLimits::new(
            usize::try_from(config.server.max_header_bytes).unwrap_or(usize::MAX),
            usize::try_from(config.server.request_head_budget).unwrap_or(usize::MAX),
        ),
    };
    let served = server::serve(listeners, proxies, shared, shutdown).await;
    background.shutdown().await;
    if let Some(tracing) = tracing {
        tracing.shutdown().await;
    }
    served
}

/// What the running parts of mpp share, made once from the configuration.
struct Parts {
    metrics: Arc<metrics::Metrics>,
    /// The published selection: written by the selection loop, read by everything else.
    snapshot: Arc<ArcSwap<selection::Snapshot>>,
    pseudonym: via::Pseudonym,
    web: Option<Arc<web::Web>>,
    credentials: Option<Arc<credentials::Credentials>>,
    /// The TLS set-up towards the replicas, its files kept current.
    backend_tls: Arc<client::BackendTls>,
    /// The client probes use (proxied requests have each serving thread's own pool).
    client: client::HttpClient,
    /// The dashboard cache, unless `--cache-max-bytes 0`.
    cache: Option<Arc<cache::Cache>>,
}

impl Parts {
    /// Reads the web config file and the credentials files, and builds the probes' client:
    /// the start-up errors a mistake in those files makes.
    fn new(config: &Config) -> anyhow::Result<Parts> {
        let web = match &config.server.web_config_file {
            Some(file) => Some(Arc::new(web::Web::load(file, config.server.web_health_without_auth)?)),
            None => None,
        };
        let credentials = match &config.backends.credentials {
            Some(source) => {
                Some(Arc::new(credentials::Credentials::load(source.clone(), config.backends.replace_authorization)?))
            }
            None => None,
        };
        let backend_tls =
            Arc::new(client::BackendTls::load(&config.backends.tls).context("cannot set up the backend client")?);
        let client = client::build_with(&backend_tls, config.backends.max_connections)
            .context("cannot set up the backend client")?;
        let metrics = Arc::new(Self::metrics(config, web.as_ref()));
        let cache = (config.proxy.cache_max_bytes > 0).then(|| {
            let fresh = i64::try_from(config.proxy.cache_fresh_window.as_millis()).unwrap_or(i64::MAX);
            Arc::new(cache::Cache::new(config.proxy.cache_max_bytes, fresh, metrics.cache.clone()))
        });
        Ok(Parts {
            metrics,
            cache,
            snapshot: Arc::new(ArcSwap::from_pointee(selection::Snapshot::empty())),
            pseudonym: via::Pseudonym::random(),
            web,
            credentials,
            backend_tls,
            client,
        })
    }

    /// mpp's metrics, with the expiry of the certificates it presents: the listener's as in
    /// force, the replicas' client certificate as its file holds it now.
    fn metrics(config: &Config, web: Option<&Arc<web::Web>>) -> metrics::Metrics {
        let mut metrics = metrics::Metrics::new();
        let mut certificates: Vec<(&'static str, expiry::Source)> = Vec::new();
        if let Some(web) = web {
            let web = web.clone();
            certificates.push(("listener", Arc::new(move || web.certificate_expiry())));
        }
        if let Some((cert_file, _)) = &config.backends.tls.client_cert {
            let cert_file = cert_file.clone();
            certificates.push(("backends", Arc::new(move || expiry::not_after_of_file(&cert_file))));
        }
        if !certificates.is_empty() {
            metrics.register_collector(Box::new(expiry::ExpiryCollector::new(certificates)));
        }
        metrics
    }

    /// A prober of the replicas, asking for `history` (see [`probe::Prober::new`]).
    fn prober(&self, history: Option<Duration>) -> probe::Prober {
        probe::Prober::new(self.client.clone(), history, self.pseudonym.via().clone())
            .with_credentials(self.credentials.clone())
    }
}

/// On each SIGHUP, asks every file mpp reads to be read again at once (the web config and
/// what it names, the credentials) and a selection round (which reads the endpoints file).
/// The replicas' client certificate needs no ask: every new connection to a replica looks at
/// its files (at most once a second).
async fn reload_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    reloads: reload::Reloads,
    reselect: mpsc::Sender<()>,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received; reading every file again");
        reloads.ask();
        let _ = reselect.try_send(());
    }
}

/// The start-up log line: what mpp runs with (never a secret).
fn log_start(config: &Config, listeners: &[TcpListener], facts: &admin::Facts, parts: &Parts) -> anyhow::Result<()> {
    let mut listen = Vec::new();
    for listener in listeners {
        listen.push(listener.local_addr().context("a listener has no address")?.to_string());
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listen.join(","),
        discovery = %facts.discovery,
        strategy = %config.selection.routing_strategy,
        interval = ?config.selection.selection_interval,
        liveness_interval = ?config.selection.liveness_interval,
        max_connections = config.server.max_connections,
        serving_threads = config.server.serving_threads,
        affinity = %config.proxy.affinity_options,
        max_request_body = config.proxy.max_request_body,
        request_body_budget = config.proxy.request_body_budget,
        request_timeout = ?config.proxy.request_timeout,
        insecure = config.backends.tls.insecure,
        web_config = parts.web.as_ref().map_or_else(|| "none".into(), |web| web.describe()),
        backend_credentials = parts.credentials.as_ref().map_or_else(|| "none".into(), |c| c.describe()),
        "mpp starting"
    );
    Ok(())
}

/// Runs selection rounds until discovery has answered completely and a round ran on it, or
/// until `patience` is spent (then warns: connections are accepted anyway). `false` when
/// `shutdown` came first.
async fn settle(
    selector: &mut selection::Selector,
    reselect: &mut mpsc::Receiver<()>,
    patience: Duration,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let startup = tokio::time::Instant::now();
    selector.round().await;
    while !selector.settled() {
        if startup.elapsed() >= patience {
            tracing::warn!(
                waited = ?patience,
                "discovery has not answered yet (--startup-timeout); accepting connections anyway"
            );
            break;
        }
        tokio::select! {
            _ = reselect.recv() => {}
            () = tokio::time::sleep(STARTUP_RETRY) => {}
            () = &mut shutdown => return false,
        }
        selector.round().await;
    }
    true
}

/// One proxy per serving thread, each with its own pool, so that a thread's requests only
/// ever use connections that thread drives (the probes keep `parts.client`).
fn proxies(
    config: &Config,
    parts: &Parts,
    tracer: Option<telemetry::Tracer>,
    reselect: mpsc::Sender<()>,
) -> anyhow::Result<Vec<proxy::Proxy>> {
    let pool = || -> anyhow::Result<client::pool::Pool> {
        let connector = parts.backend_tls.connector().context("cannot set up the backend client")?;
        Ok(client::pool::Pool::new(connector, config.backends.max_connections))
    };
    let proxy = proxy::Proxy::new(proxy_settings(config, parts, pool()?, tracer, reselect)?);
    let mut proxies = vec![proxy.clone()];
    for _ in 1..config.server.serving_threads {
        proxies.push(proxy.with_pool(pool()?));
    }
    Ok(proxies)
}

/// The proxy's settings: its flags (`--max-request-body` and the like) around the running
/// parts it shares with the rest of mpp.
fn proxy_settings(
    config: &Config,
    parts: &Parts,
    pool: client::pool::Pool,
    tracer: Option<telemetry::Tracer>,
    reselect: mpsc::Sender<()>,
) -> anyhow::Result<proxy::ProxySettings> {
    let flags = &config.proxy;
    let budget = usize::try_from(flags.request_body_budget).unwrap_or(usize::MAX >> 4);
    Ok(proxy::ProxySettings {
        pool,
        snapshot: parts.snapshot.clone(),
        metrics: parts.metrics.clone(),
        affinity: flags.affinity_options,
        reselect,
        body: proxy::body::BodyLimits {
            max: flags.max_request_body,
            min_rate: flags.request_body_min_rate,
            grace: config.server.header_read_timeout,
            budget: Arc::new(Semaphore::new(budget)),
            budget_bytes: flags.request_body_budget,
        },
        request_timeout: flags.request_timeout,
        max_backend_connections: config.backends.max_connections,
        pseudonym: parts.pseudonym.clone(),
        trusted_proxies: flags.trusted_proxies.clone(),
        credentials: parts.credentials.clone(),
        coverage_routing: config.coverage.coverage_routing,
        merge_max_bytes: flags.merge_max_bytes,
        max_fanout_per_client: flags.max_fanout_per_client as usize,
        admin_api: flags.admin_api,
        query_log: proxy::query_log::QueryLog::start(
            flags.query_log_file.as_deref(),
            Some(flags.slow_query_threshold).filter(|t| !t.is_zero()),
            parts.metrics.query_log_dropped.clone(),
            parts.metrics.reloads.asked(),
        )?,
        tracer,
        cache: parts.cache.clone(),
    })
}

/// Binds a listening socket for each of `config`'s addresses. For every address of a
/// family (`[::]`), falls back to `0.0.0.0` where IPv6 is unavailable.
pub async fn bind(config: &Config) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for listen in config.server.listen() {
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) if listen.ip().is_unspecified() && listen.is_ipv6() => {
                tracing::debug!(error = %e, "IPv6 unavailable; listening on IPv4 only");
                let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], listen.port()));
                TcpListener::bind(v4).await.with_context(|| format!("cannot listen on {v4}"))?
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {listen}")),
        };
        listeners.push(listener);
    }
    Ok(listeners)
}

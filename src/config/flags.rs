//! The flags, grouped by who uses them: [`Selection`] (the selection loop and liveness
//! checks), [`Proxy`] (the request path), [`Server`] (the listener: address, connection
//! limits, web config), [`Coverage`] (routing by coverage) and [`BackendFlags`] (the client
//! to the replicas). Each discovery kind's flags are in its own file under `discovery/`.
//!
//! A flag is one field here, with its name, `MPP_*` variable, default and help, parsed by its
//! value parser into the type its user takes; rules that span several flags are in
//! [`super::Config::from_args`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ArgAction;
use clap::builder::TypedValueParser as _;

use crate::proxy::affinity::AffinityOptions;
use crate::proxy::broadcast::AdminApi;
use crate::proxy::client_ip::TrustedProxies;
use crate::strategy::Strategy;
use crate::units::{parse_duration, parse_size};

/// How candidates are chosen and checked.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// The strategy to use for choosing viable prometheus endpoint(s) from those located:
    /// 'single-most-data', 'random' or 'minimum-history:DURATION'
    #[arg(
        long,
        env = "MPP_ROUTING_STRATEGY",
        default_value = "single-most-data",
        value_name = "STRATEGY",
        value_parser = parse_strategy
    )]
    pub routing_strategy: Strategy,

    /// The interval at which selections are performed; a selection is also performed at once
    /// upon backend failures
    #[arg(
        long,
        env = "MPP_SELECTION_INTERVAL",
        default_value = "10s",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = parse_interval
    )]
    pub selection_interval: Duration,

    /// How often every candidate's /-/ready is checked, apart from selection rounds; a replica
    /// that fails it is out of traffic at once
    #[arg(
        long,
        env = "MPP_LIVENESS_INTERVAL",
        default_value = "1s",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = parse_interval
    )]
    pub liveness_interval: Duration,

    /// How long mpp waits at start-up for discovery's first complete answer before it
    /// accepts connections anyway
    #[arg(
        long,
        env = "MPP_STARTUP_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = parse_interval
    )]
    pub startup_timeout: Duration,

    /// Take a replica out of the selection while its newest sample is this far behind its
    /// peers' ('0s': never)
    #[arg(
        long,
        env = "MPP_DATA_LAG_THRESHOLD",
        default_value = "2m",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub data_lag_threshold: Duration,
}

/// What the request path needs: affinity, body limits, the time a request may take.
#[derive(Debug, Clone, clap::Args)]
pub struct Proxy {
    /// A comma-separated list of sticky-session modes to enable: 'cookies' and 'sourceip'
    #[arg(
        long,
        env = "MPP_AFFINITY_OPTIONS",
        default_value = "cookies",
        value_name = "OPTIONS",
        value_parser = parse_affinity
    )]
    pub affinity_options: AffinityOptions,

    /// The largest request body buffered for retries (e.g. 16MiB, 512KiB, 1048576);
    /// larger requests are refused with 413
    #[arg(
        long,
        env = "MPP_MAX_REQUEST_BODY",
        default_value = "16MiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub max_request_body: u64,

    /// The slowest a request body may arrive, in bytes per second, once --header-read-timeout
    /// has passed; slower clients get 408
    #[arg(
        long,
        env = "MPP_REQUEST_BODY_MIN_RATE",
        default_value = "1KiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub request_body_min_rate: u64,

    /// The memory all buffered request bodies may take together ('auto': an eighth of the
    /// memory mpp may use, between 32MiB and 512MiB); requests beyond it get 503 with
    /// Retry-After
    #[arg(
        long,
        env = "MPP_REQUEST_BODY_BUDGET",
        default_value = "auto",
        value_name = "SIZE",
        value_parser = parse_budget
    )]
    pub request_body_budget: u64,

    /// The most time one request may spend on all its attempts together; a query that names
    /// no timeout passes the time left to the replica as Prometheus's 'timeout' parameter
    #[arg(
        long,
        env = "MPP_REQUEST_TIMEOUT",
        default_value = "2m",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = parse_interval
    )]
    pub request_timeout: Duration,

    /// The peers (comma-separated address blocks, or 'none') whose X-Forwarded-For is
    /// believed for source-IP affinity
    #[arg(
        long,
        env = "MPP_TRUSTED_PROXIES",
        default_value = "0.0.0.0/0,::/0",
        value_name = "CIDRS",
        value_parser = parse_trusted
    )]
    pub trusted_proxies: TrustedProxies,

    /// The most bytes of replica answers held to merge one query; over it, the primary
    /// replica's answer is sent alone, with a warning
    #[arg(
        long,
        env = "MPP_MERGE_MAX_BYTES",
        default_value = "64MiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub merge_max_bytes: u64,

    /// The most replica requests one client address's merged and sliced queries may have in
    /// flight beyond one per query; over it, a query is answered by one replica, with a warning
    #[arg(
        long,
        env = "MPP_MAX_FANOUT_PER_CLIENT",
        default_value_t = 64,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_fanout_per_client: u32,

    /// What happens to Prometheus's TSDB admin API (/api/v1/admin/tsdb/*) and lifecycle
    /// paths (/-/reload, /-/quit): 'refuse' answers 403 and sends nothing; 'all' sends each
    /// to every viable replica, and succeeds only when every one did
    #[arg(long, env = "MPP_ADMIN_API", default_value = "refuse", value_name = "MODE", value_enum)]
    pub admin_api: AdminApi,

    /// The most bytes the dashboard cache holds (range queries' steps and past instant
    /// queries, least recently used evicted); 0 turns the cache off
    #[arg(long, env = "MPP_CACHE_MAX_BYTES", default_value = "256MiB", value_name = "SIZE", value_parser = parse_cache_size)]
    pub cache_max_bytes: u64,

    /// Steps (and instant queries) within this much of now are never cached: late scrapes,
    /// rule evaluations and out-of-order samples still change them
    #[arg(long, env = "MPP_CACHE_FRESH_WINDOW", default_value = "5m", value_name = "DURATION", value_parser = parse_duration)]
    pub cache_fresh_window: Duration,

    /// Write one JSON line per API query to this file (Prometheus's query log format, with
    /// the replicas that answered); reopened on SIGHUP
    #[arg(long, env = "MPP_QUERY_LOG_FILE", value_name = "PATH")]
    pub query_log_file: Option<PathBuf>,

    /// Log API queries at least this slow at warn, with the query log's fields (0: off)
    #[arg(long, env = "MPP_SLOW_QUERY_THRESHOLD", default_value = "0", value_name = "DURATION", value_parser = parse_duration)]
    pub slow_query_threshold: Duration,
}

/// OpenTelemetry tracing of the requests.
#[derive(Debug, Clone, clap::Args)]
pub struct Tracing {
    /// Send traces of the requests over OTLP to this collector (http:// or https:// URL; for
    /// HTTP, a URL without a path means its /v1/traces); off when not given
    #[arg(long, env = "MPP_TRACING_ENDPOINT", value_name = "URL", value_parser = parse_tracing_endpoint)]
    pub tracing_endpoint: Option<http::Uri>,

    /// How traces reach --tracing-endpoint: grpc or http (protobuf over HTTP)
    #[arg(long, env = "MPP_TRACING_PROTOCOL", default_value = "grpc", value_name = "PROTOCOL", value_enum)]
    pub tracing_protocol: crate::telemetry::Protocol,

    /// The share of requests without a sampled trace context of their own that are traced,
    /// from 0 to 1 (a client's sampled traceparent is always followed)
    #[arg(long, env = "MPP_TRACING_SAMPLING_RATIO", default_value = "0.1", value_name = "RATIO", value_parser = parse_ratio)]
    pub tracing_sampling_ratio: f64,
}

/// The listener: where, how many connections and threads, their deadlines, its security.
#[derive(Debug, Clone, clap::Args)]
pub struct Server {
    /// The port on which the proxy will listen (on all addresses, IPv6 and IPv4) when no
    /// --web.listen-address is given
    #[arg(
        long,
        env = "MPP_PORT",
        default_value_t = 9090,
        value_name = "PORT",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub port: u16,

    /// An address to listen on (e.g. :9090, 127.0.0.1:9090, [::1]:0); repeat the flag (or
    /// separate with commas) for several; overrides --port. Also --listen-address
    #[arg(
        long = "web.listen-address",
        visible_alias = "listen-address",
        env = "MPP_LISTEN_ADDRESS",
        value_name = "ADDR",
        value_delimiter = ',',
        value_parser = parse_listen_address
    )]
    pub listen_address: Vec<SocketAddr>,

    /// How long a client may take to send a request's headers before its connection is closed
    #[arg(
        long,
        env = "MPP_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = parse_interval
    )]
    pub header_read_timeout: Duration,

    /// The most client connections served at once; further clients wait in the listen queue
    #[arg(
        long,
        env = "MPP_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// Threads that serve client connections (0: one per CPU this process may use, less one,
    /// and at least one)
    #[arg(
        long,
        env = "MPP_SERVING_THREADS",
        default_value_t = 0,
        value_name = "N",
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(u16).map(serving_threads)
    )]
    pub serving_threads: usize,

    /// How long a connection with no request in flight is kept open (keep-alive); longer
    /// than clients keep idle connections (Go's 90s), so that the client closes first
    #[arg(
        long,
        env = "MPP_IDLE_TIMEOUT",
        default_value = "2m",
        value_name = "DURATION",
        allow_hyphen_values = true,
        value_parser = parse_interval
    )]
    pub idle_timeout: Duration,

    /// The most HTTP/2 streams (concurrent requests) one client connection may open
    #[arg(
        long,
        env = "MPP_MAX_CONCURRENT_STREAMS",
        default_value_t = 100,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_streams: u32,

    /// The largest request head (request line and headers), over HTTP/1 and, after HPACK
    /// decoding, HTTP/2 (1KiB to 1MiB); larger heads get 431
    #[arg(
        long,
        env = "MPP_MAX_HEADER_BYTES",
        default_value = "64KiB",
        value_name = "SIZE",
        value_parser = parse_header_bytes
    )]
    pub max_header_bytes: u64,

    /// The memory the unfinished request heads of all connections may take together beyond
    /// each one's first 16KiB; a connection whose head cannot be paid for gets 503 and is closed
    #[arg(
        long,
        env = "MPP_REQUEST_HEAD_BUDGET",
        default_value = "64MiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub request_head_budget: u64,

    /// A Prometheus web config file (exporter-toolkit's format) securing the listener: TLS,
    /// client certificates, basic auth, response headers; read again when it changes
    #[arg(long = "web.config.file", env = "MPP_WEB_CONFIG_FILE", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,

    /// Leave /mpp/health and /mpp/ready open without basic auth (for health checks)
    #[arg(long = "web.health-without-auth", env = "MPP_WEB_HEALTH_WITHOUT_AUTH")]
    pub web_health_without_auth: bool,
}

impl Server {
    /// Where to listen: each `--web.listen-address`, else every address on `--port`.
    pub fn listen(&self) -> Vec<SocketAddr> {
        if self.listen_address.is_empty() {
            return vec![SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, self.port))];
        }
        self.listen_address.clone()
    }
}

/// Routing by the replicas' coverage.
#[derive(Debug, Clone, clap::Args)]
pub struct Coverage {
    /// Route each query to a replica whose data has no hole in the time range it reads, and
    /// merge answers when no single replica has it whole ('false': route by strategy only)
    #[arg(
        long,
        env = "MPP_COVERAGE_ROUTING",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "BOOL"
    )]
    pub coverage_routing: bool,

    /// The stretch of time the coverage map compares replicas over ('auto': four times the
    /// longest scrape interval of the replicas' targets)
    #[arg(
        long,
        env = "MPP_COVERAGE_BUCKET",
        default_value = "auto",
        value_name = "DURATION",
        value_parser = parse_bucket
    )]
    pub coverage_bucket: Bucket,
}

/// The client to the replicas: its TLS, its credentials, its connections. Checked together
/// into [`super::Backends`].
#[derive(Debug, Clone, clap::Args)]
pub struct BackendFlags {
    /// Whether connections to https endpoints with unverifiable certs are allowed
    #[arg(short = 'k', long, env = "MPP_INSECURE_CERTS")]
    pub insecure: bool,

    /// The most requests in flight to one replica, and so the most connections mpp opens to
    /// it; further requests queue for up to 5s, then get 503 with Retry-After
    #[arg(
        long,
        env = "MPP_MAX_BACKEND_CONNECTIONS",
        default_value_t = 256,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_backend_connections: u32,

    /// Verify https replicas against this CA (PEM) instead of the system's roots
    #[arg(long, env = "MPP_BACKEND_CA_FILE", value_name = "PATH")]
    pub backend_ca_file: Option<PathBuf>,

    /// Present this client certificate (PEM) to https replicas; needs --backend-key-file
    #[arg(long, env = "MPP_BACKEND_CERT_FILE", value_name = "PATH")]
    pub backend_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --backend-cert-file
    #[arg(long, env = "MPP_BACKEND_KEY_FILE", value_name = "PATH")]
    pub backend_key_file: Option<PathBuf>,

    /// The name https replicas' certificates must carry (and SNI), instead of each URL's host
    #[arg(long, env = "MPP_BACKEND_SERVER_NAME", value_name = "NAME")]
    pub backend_server_name: Option<String>,

    /// Authenticate to the replicas with basic auth as this user
    #[arg(long, env = "MPP_BACKEND_BASIC_AUTH_USER", value_name = "USER")]
    pub backend_basic_auth_user: Option<String>,

    /// The file holding the basic auth password for the replicas (read again when it changes)
    #[arg(long, env = "MPP_BACKEND_BASIC_AUTH_PASSWORD_FILE", value_name = "PATH")]
    pub backend_basic_auth_password_file: Option<PathBuf>,

    /// Authenticate to the replicas with the bearer token in this file (read again when it changes)
    #[arg(long, env = "MPP_BACKEND_BEARER_TOKEN_FILE", value_name = "PATH")]
    pub backend_bearer_token_file: Option<PathBuf>,

    /// Send mpp's credentials to the replicas even when a client sent an Authorization header
    /// of its own (by default the client's is forwarded unchanged)
    #[arg(long, env = "MPP_BACKEND_REPLACE_AUTHORIZATION")]
    pub backend_replace_authorization: bool,
}

/// `--max-header-bytes`: a size from 1 KiB to 1 MiB (Go's, and so Prometheus's, largest).
fn parse_header_bytes(value: &str) -> Result<u64, String> {
    let size = parse_size(value)?;
    if !(1 << 10..=1 << 20).contains(&size) {
        return Err(format!("'{value}' is not between 1KiB and 1MiB"));
    }
    Ok(size)
}

/// `--request-body-budget 'auto'`: an eighth of the memory limit (the cgroup's, else the
/// machine's), within these bounds; a quarter of a gibibyte when the limit is unknown.
const AUTO_BUDGET: std::ops::RangeInclusive<u64> = (32 << 20)..=(512 << 20);

/// The automatic body budget, given the memory limit (if known).
fn auto_budget(memory_limit: Option<u64>) -> u64 {
    memory_limit.map_or(AUTO_BUDGET.start() * 4, |m| m / 8).clamp(*AUTO_BUDGET.start(), *AUTO_BUDGET.end())
}

/// `--request-body-budget`: a size, or sized for the machine (resolved here, once).
fn parse_budget(value: &str) -> Result<u64, String> {
    let bytes = if value.trim().eq_ignore_ascii_case("auto") {
        auto_budget(crate::system::memory_limit())
    } else {
        match parse_size(value)? {
            0 => return Err(format!("'{value}' is too small; give at least one byte, or 'auto'")),
            n => n,
        }
    };
    // tokio's semaphore (the budget's permits) holds at most 2^61 - 1.
    Ok(bytes.min(1 << 60))
}

/// `--serving-threads`: 0 stands for one per CPU this process may use, less one, and at least
/// one. Each busy serving thread competes for a CPU with everything else that runs (mpp's own
/// accepting and background thread, and the machine's other work), and a request waits while
/// the thread holding it waits; on 2 CPUs shared with a load generator and the backend, one
/// serving thread gave a third of the p99 of two at 32 connections and less CPU per request,
/// at as many requests/s (about 3 % fewer at 256 connections; BENCHMARKS.md, "Eighth round").
fn serving_threads(n: u16) -> usize {
    match n {
        0 => default_serving_threads(std::thread::available_parallelism().map_or(1, usize::from)),
        n => usize::from(n),
    }
}

/// The serving threads `--serving-threads 0` stands for on `cpus` CPUs.
pub(crate) fn default_serving_threads(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

/// `--coverage-bucket`: derived from the scrape interval, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Four times the longest scrape interval.
    Auto,
    /// This long.
    Fixed(Duration),
}

impl Bucket {
    /// The fixed length, if not derived.
    pub fn fixed(self) -> Option<Duration> {
        match self {
            Bucket::Auto => None,
            Bucket::Fixed(d) => Some(d),
        }
    }
}

fn parse_bucket(value: &str) -> Result<Bucket, String> {
    if value.trim().eq_ignore_ascii_case("auto") {
        return Ok(Bucket::Auto);
    }
    let d = parse_duration(value)?;
    if d < Duration::from_secs(1) {
        return Err(format!("'{value}' is too short; a bucket must be at least 1s, or 'auto'"));
    }
    Ok(Bucket::Fixed(d))
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{value}' is too short; the interval must be at least 100ms"));
    }
    Ok(d)
}

fn parse_trusted(value: &str) -> Result<TrustedProxies, String> {
    value.parse()
}

fn parse_strategy(value: &str) -> Result<Strategy, String> {
    value.parse()
}

fn parse_affinity(value: &str) -> Result<AffinityOptions, String> {
    value.parse()
}

/// `--cache-max-bytes`: a size, 0 for none.
fn parse_cache_size(value: &str) -> Result<u64, String> {
    if value.trim() == "0" {
        return Ok(0);
    }
    parse_size(value)
}

/// `--tracing-endpoint`: an http or https URL with a host.
fn parse_tracing_endpoint(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value.trim().parse().map_err(|e| format!("'{value}' is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "'{value}' is not an http:// or https:// URL with a host (e.g. http://otel-collector:4317)"
        ));
    }
    Ok(uri)
}

/// `--tracing-sampling-ratio`: a number from 0 to 1.
fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("'{value}' is not a ratio from 0 to 1")),
    }
}

/// A `--web.listen-address` as Prometheus takes it: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for
/// every address (IPv6 and IPv4).
fn parse_listen_address(value: &str) -> Result<SocketAddr, String> {
    let text = value.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("'{text}' has no valid port (0 to 65535)"))?;
        return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    text.parse().map_err(|_| format!("'{text}' is not an address to listen on; expected IP:PORT, [IPv6]:PORT or :PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_budget_is_an_eighth_of_memory_within_bounds() {
        assert_eq!(auto_budget(None), 128 << 20);
        assert_eq!(auto_budget(Some(1 << 30)), 128 << 20);
        assert_eq!(auto_budget(Some(64 << 20)), 32 << 20);
        assert_eq!(auto_budget(Some(64 << 30)), 512 << 20);
        assert_eq!(parse_budget("1MiB"), Ok(1 << 20));
        assert!(parse_budget("0").is_err());
    }
}

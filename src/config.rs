//! The command line, in two stages: [`Args`] is what clap reads (flags and `MPP_*`
//! variables, with the original mpp's names and defaults), [`Config`] is the validated,
//! typed result the rest of the program runs on. Nothing after this module parses a string
//! from the command line again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::units::{parse_duration, parse_size};

use rustls::pki_types::ServerName;

use crate::client::TlsOptions;
use crate::credentials::CredentialsSource;
use crate::discovery::{DiscoveryConfig, KubernetesConfig, MarathonConfig};
use crate::proxy::affinity::AffinityOptions;
use crate::proxy::client_ip::TrustedProxies;
use crate::strategy::Strategy;

/// The flags and environment variables, as the original mpp spells them.
#[derive(Debug, Parser)]
#[command(
    name = "mpp",
    version,
    about = "Multi-Prometheus proxy: routes queries to one of several HA Prometheus replicas",
    long_about = "Launch a dynamically configured proxy over multiple prometheus endpoints \
                  which selects endpoints based on configurable criteria.",
    disable_version_flag = true
)]
pub struct Args {
    /// The path to a kubeconfig file used to communicate with the kubernetes api server to
    /// locate prometheus instances
    #[arg(long, env = "MPP_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The service name used to locate prometheus endpoints; takes precedence over
    /// 'kube-pod-label-selector' (also read from MPP_KUBE_SERVICE_NAME)
    #[arg(long, env = "MPP_SERVICE_NAME", value_name = "NAME")]
    pub kube_service_name: Option<String>,

    /// The label selector used to find prometheus pods
    #[arg(long, env = "MPP_KUBE_POD_LABEL_SELECTOR", value_name = "SELECTOR")]
    pub kube_pod_label_selector: Option<String>,

    /// The namespace in which prometheus pods/endpoints exist
    #[arg(long, env = "MPP_KUBE_NAMESPACE", default_value = "default", value_name = "NAMESPACE")]
    pub kube_namespace: String,

    /// The port (name or number) where prometheus is listening on individual pods/endpoints
    #[arg(long, env = "MPP_KUBE_PORT", value_name = "PORT")]
    pub kube_port: Option<String>,

    /// The URL for the marathon API endpoint used to locate prometheus instances
    #[arg(long, env = "MPP_MARATHON_URL", value_name = "URL")]
    pub marathon_url: Option<String>,

    /// A comma-separated list of marathon app IDs whose tasks will be queried for prometheus
    /// endpoints
    #[arg(long, env = "MPP_MARATHON_APPS", value_name = "APPS")]
    pub marathon_apps: Option<String>,

    /// Whether connections to https endpoints with unverifiable certs are allowed
    #[arg(short = 'k', long, env = "MPP_INSECURE_CERTS")]
    pub insecure: bool,

    /// The principal secret used to handle authentication with marathon
    #[arg(long, env = "MPP_MARATHON_PRINCIPAL_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub marathon_principal_secret: Option<String>,

    /// The authentication endpoint to use with the 'marathon-principal-secret', overriding the
    /// value contained within the secret
    #[arg(long, env = "MPP_MARATHON_AUTH_ENDPOINT", value_name = "URL")]
    pub marathon_auth_endpoint: Option<String>,

    /// A file path containing a list of endpoints to use, one per line. This file is re-read at
    /// every selection interval and whenever it changes
    #[arg(long, env = "MPP_ENDPOINTS_FILE", value_name = "PATH")]
    pub endpoints_file: Option<PathBuf>,

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

    /// A comma-separated list of sticky-session modes to enable: 'cookies' and 'sourceip'
    #[arg(
        long,
        env = "MPP_AFFINITY_OPTIONS",
        default_value = "cookies",
        value_name = "OPTIONS",
        value_parser = parse_affinity
    )]
    pub affinity_options: AffinityOptions,

    /// The port on which the proxy will listen (on all addresses, IPv6 and IPv4)
    #[arg(
        long,
        env = "MPP_PORT",
        default_value_t = 9090,
        value_name = "PORT",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub port: u16,

    /// Listen on this exact address instead (e.g. 127.0.0.1:9090, [::1]:0); overrides --port
    #[arg(long, env = "MPP_LISTEN_ADDRESS", value_name = "ADDR")]
    pub listen_address: Option<SocketAddr>,

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

    /// Threads that serve client connections (0: one per CPU this process may use)
    #[arg(
        long,
        env = "MPP_SERVING_THREADS",
        default_value_t = 0,
        value_name = "N",
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(u16)
    )]
    pub serving_threads: u16,

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
    pub request_body_budget: Budget,

    /// The most HTTP/2 streams (concurrent requests) one client connection may open
    #[arg(
        long,
        env = "MPP_MAX_CONCURRENT_STREAMS",
        default_value_t = 100,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_streams: u32,

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

    /// A Prometheus web config file (exporter-toolkit's format) securing the listener: TLS,
    /// client certificates, basic auth, response headers; read again when it changes
    #[arg(long = "web.config.file", env = "MPP_WEB_CONFIG_FILE", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,

    /// Leave /mpp/health and /mpp/ready open without basic auth (for health checks)
    #[arg(long = "web.health-without-auth", env = "MPP_WEB_HEALTH_WITHOUT_AUTH")]
    pub web_health_without_auth: bool,

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

    /// Log debugging information
    #[arg(short = 'V', long, env = "MPP_VERBOSE")]
    pub verbose: bool,

    /// Print the version
    #[arg(short = 'v', long, action = ArgAction::Version)]
    pub version: Option<bool>,
}

/// The validated configuration that [`crate::run`] starts from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to find candidates.
    pub discovery: DiscoveryConfig,
    /// How candidates are chosen for traffic.
    pub strategy: Strategy,
    /// Time between two selection rounds when nothing triggers one earlier.
    pub selection_interval: Duration,
    /// Time between two liveness checks of every candidate.
    pub liveness_interval: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// The most client connections served at once.
    pub max_connections: u32,
    /// Threads that serve client connections, each with its own backend connections.
    pub serving_threads: usize,
    /// Which sticky-session modes are on.
    pub affinity: AffinityOptions,
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Whether certificates of https backends go unverified.
    pub insecure: bool,
    /// The largest request body buffered (and so replayable); larger ones get 413.
    pub max_request_body: u64,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// The slowest accepted request body rate, bytes per second.
    pub request_body_min_rate: u64,
    /// The memory all buffered request bodies may take together, in bytes.
    pub request_body_budget: u64,
    /// The most HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// The most requests in flight to one replica.
    pub max_backend_connections: u32,
    /// The total time one request may spend on its attempts.
    pub request_timeout: Duration,
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// How long start-up waits for discovery's first complete answer.
    pub startup_timeout: Duration,
    /// Whether debug logging is on.
    pub verbose: bool,
    /// The web config file securing the listener (read at start-up by [`crate::run`]).
    pub web_config_file: Option<PathBuf>,
    /// Whether `/mpp/health` and `/mpp/ready` skip basic auth.
    pub web_health_without_auth: bool,
    /// How https connections to the replicas are verified and authenticated.
    pub backend_tls: TlsOptions,
    /// The credentials sent to the replicas, if any.
    pub backend_credentials: Option<CredentialsSource>,
    /// Whether mpp's credentials replace a client's own `Authorization` header.
    pub backend_replace_authorization: bool,
    /// Whether queries are routed by the replicas' coverage.
    pub coverage_routing: bool,
    /// The coverage map's bucket, when not derived from the scrape interval.
    pub coverage_bucket: Option<Duration>,
    /// The most bytes of answers held to merge one query.
    pub merge_max_bytes: u64,
    /// How far behind its peers a replica's newest sample may be (zero: no limit).
    pub data_lag_threshold: Duration,
}

/// `--request-body-budget`: a size, or sized for the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// An eighth of the memory limit (the cgroup's, else the machine's), within
    /// [`Budget::AUTO_MIN`] and [`Budget::AUTO_MAX`].
    Auto,
    /// This many bytes.
    Bytes(u64),
}

impl Budget {
    /// The smallest automatic budget.
    pub const AUTO_MIN: u64 = 32 << 20;
    /// The largest automatic budget.
    pub const AUTO_MAX: u64 = 512 << 20;

    /// The budget in bytes, given the memory limit (if known).
    pub fn bytes(self, memory_limit: Option<u64>) -> u64 {
        match self {
            Budget::Bytes(n) => n,
            Budget::Auto => memory_limit.map_or(Self::AUTO_MIN * 4, |m| m / 8).clamp(Self::AUTO_MIN, Self::AUTO_MAX),
        }
    }
}

fn parse_budget(value: &str) -> Result<Budget, String> {
    if value.trim().eq_ignore_ascii_case("auto") {
        return Ok(Budget::Auto);
    }
    match parse_size(value)? {
        0 => Err(format!("'{value}' is too small; give at least one byte, or 'auto'")),
        n => Ok(Budget::Bytes(n)),
    }
}

/// `--coverage-bucket`: derived from the scrape interval, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Four times the longest scrape interval.
    Auto,
    /// This long.
    Fixed(Duration),
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

fn parse_trusted(value: &str) -> Result<TrustedProxies, String> {
    value.parse()
}

/// A command line that parsed but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "no discovery configured: set --endpoints-file, --marathon-url with --marathon-apps, \
         or --kube-service-name / --kube-pod-label-selector"
    )]
    NoDiscovery,
    #[error("--marathon-url '{0}' needs --marathon-apps (a comma-separated list of app ids)")]
    MarathonWithoutApps(String),
    #[error("--marathon-apps '{0}' needs --marathon-url")]
    AppsWithoutMarathon(String),
    #[error("{0}")]
    Marathon(String),
    #[error("{0}")]
    Kubernetes(String),
    #[error("more than one discovery configured ({0}); choose one")]
    ManyDiscoveries(String),
    #[error("{0}")]
    Limits(String),
    #[error("{0}")]
    Backend(String),
}

impl Config {
    /// Validates what clap parsed. `kube_service_name_env` is `MPP_KUBE_SERVICE_NAME`, the
    /// second name the service-name flag answers to.
    pub fn from_args(args: Args, kube_service_name_env: Option<String>) -> Result<Self, ConfigError> {
        let kube_service = args.kube_service_name.or(kube_service_name_env).filter(|s| !s.is_empty());
        let kube = KubernetesConfig::from_flags(
            args.kubeconfig,
            kube_service,
            args.kube_pod_label_selector,
            args.kube_namespace,
            args.kube_port.as_deref(),
        )
        .map_err(ConfigError::Kubernetes)?;
        let marathon = match (&args.marathon_url, &args.marathon_apps) {
            (Some(url), Some(apps)) => Some(
                MarathonConfig::new(
                    url,
                    apps,
                    args.marathon_principal_secret.as_deref(),
                    args.marathon_auth_endpoint.as_deref(),
                )
                .map_err(ConfigError::Marathon)?,
            ),
            (Some(url), None) => {
                return Err(ConfigError::MarathonWithoutApps(crate::discovery::redact_user_info(url)));
            }
            (None, Some(apps)) => return Err(ConfigError::AppsWithoutMarathon(apps.clone())),
            (None, None) => None,
        };
        let file = args.endpoints_file.is_some();
        let chosen: Vec<&str> = [
            (file, "--endpoints-file"),
            (marathon.is_some(), "--marathon-url"),
            (kube.is_some(), "--kube-service-name/--kube-pod-label-selector"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if chosen.len() > 1 {
            return Err(ConfigError::ManyDiscoveries(chosen.join(", ")));
        }
        let discovery = match (args.endpoints_file, marathon, kube) {
            (Some(path), _, _) => DiscoveryConfig::File(path),
            (None, Some(marathon), _) => DiscoveryConfig::Marathon(marathon),
            (None, None, Some(kube)) => DiscoveryConfig::Kubernetes(kube),
            (None, None, None) => return Err(ConfigError::NoDiscovery),
        };
        let backend_tls = TlsOptions {
            insecure: args.insecure,
            ca_file: args.backend_ca_file,
            client_cert: match (args.backend_cert_file, args.backend_key_file) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::Backend("--backend-cert-file needs --backend-key-file".into()));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Backend("--backend-key-file needs --backend-cert-file".into()));
                }
            },
            server_name: args
                .backend_server_name
                .map(|name| {
                    ServerName::try_from(name.clone()).map_err(|_| {
                        ConfigError::Backend(format!("--backend-server-name '{name}' is not a DNS name or IP address"))
                    })
                })
                .transpose()?,
        };
        let backend_credentials =
            match (args.backend_basic_auth_user, args.backend_basic_auth_password_file, args.backend_bearer_token_file)
            {
                (Some(_), _, Some(_)) => {
                    return Err(ConfigError::Backend(
                        "--backend-basic-auth-user and --backend-bearer-token-file exclude each other; choose one"
                            .into(),
                    ));
                }
                (None, Some(_), _) => {
                    return Err(ConfigError::Backend(
                        "--backend-basic-auth-password-file needs --backend-basic-auth-user".into(),
                    ));
                }
                (Some(user), password_file, None) => Some(CredentialsSource::Basic { user, password_file }),
                (None, None, Some(token_file)) => Some(CredentialsSource::Bearer { token_file }),
                (None, None, None) => None,
            };
        if args.backend_replace_authorization && backend_credentials.is_none() {
            return Err(ConfigError::Backend(
                "--backend-replace-authorization needs --backend-basic-auth-user or --backend-bearer-token-file".into(),
            ));
        }
        // tokio's semaphore (the budget's permits) holds at most 2^61 - 1.
        let request_body_budget = args.request_body_budget.bytes(crate::system::memory_limit()).min(1 << 60);
        if args.max_request_body > request_body_budget || args.max_request_body > u64::from(u32::MAX) {
            return Err(ConfigError::Limits(format!(
                "--max-request-body {} is larger than --request-body-budget {request_body_budget} (or 4GiB): \
                 such bodies could never be buffered",
                args.max_request_body
            )));
        }
        let listen =
            args.listen_address.unwrap_or_else(|| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, args.port)));
        Ok(Config {
            discovery,
            strategy: args.routing_strategy,
            selection_interval: args.selection_interval,
            liveness_interval: args.liveness_interval,
            header_read_timeout: args.header_read_timeout,
            max_connections: args.max_connections,
            serving_threads: match args.serving_threads {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => usize::from(n),
            },
            affinity: args.affinity_options,
            listen,
            insecure: args.insecure,
            max_request_body: args.max_request_body,
            idle_timeout: args.idle_timeout,
            request_body_min_rate: args.request_body_min_rate,
            request_body_budget,
            max_concurrent_streams: args.max_concurrent_streams,
            max_backend_connections: args.max_backend_connections,
            request_timeout: args.request_timeout,
            trusted_proxies: args.trusted_proxies,
            startup_timeout: args.startup_timeout,
            verbose: args.verbose,
            web_config_file: args.web_config_file,
            web_health_without_auth: args.web_health_without_auth,
            backend_tls,
            backend_credentials,
            backend_replace_authorization: args.backend_replace_authorization,
            coverage_routing: args.coverage_routing,
            coverage_bucket: match args.coverage_bucket {
                Bucket::Auto => None,
                Bucket::Fixed(d) => Some(d),
            },
            merge_max_bytes: args.merge_max_bytes,
            data_lag_threshold: args.data_lag_threshold,
        })
    }

    /// Parses a command line (program name first) the way `main` does, for tests and tools.
    pub fn parse_from<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        Config::from_args(args, None).map_err(|e| e.to_string())
    }
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{value}' is too short; the interval must be at least 100ms"));
    }
    Ok(d)
}

fn parse_strategy(value: &str) -> Result<Strategy, String> {
    value.parse()
}

fn parse_affinity(value: &str) -> Result<AffinityOptions, String> {
    value.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::parse_from(std::iter::once("mpp").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original() {
        let c = parse(&["--endpoints-file", "/tmp/x"]).unwrap();
        assert_eq!(c.strategy, Strategy::SingleMostData);
        assert_eq!(c.selection_interval, Duration::from_secs(10));
        assert!(c.affinity.cookies && !c.affinity.source_ip);
        assert_eq!(c.listen.port(), 9090);
        assert_eq!(c.max_request_body, 16 << 20);
    }

    #[test]
    fn serving_threads_default_to_one_per_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(parse(&["--endpoints-file", "/tmp/x"]).unwrap().serving_threads, cpus);
        assert_eq!(parse(&["--endpoints-file", "/tmp/x", "--serving-threads", "3"]).unwrap().serving_threads, 3);
        let error = parse(&["--endpoints-file", "/tmp/x", "--serving-threads", "-1"]).unwrap_err();
        assert!(error.contains("--serving-threads"), "{error}");
    }

    #[test]
    fn backend_flags_make_tls_options_and_credentials() {
        let c = parse(&[
            "--endpoints-file=f",
            "--backend-ca-file=ca.pem",
            "--backend-cert-file=c.pem",
            "--backend-key-file=k.pem",
            "--backend-server-name=prometheus.internal",
            "--backend-bearer-token-file=token",
            "--backend-replace-authorization",
        ])
        .unwrap();
        assert_eq!(c.backend_tls.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.backend_tls.client_cert, Some(("c.pem".into(), "k.pem".into())));
        assert_eq!(c.backend_tls.server_name, Some(ServerName::try_from("prometheus.internal").unwrap()));
        assert_eq!(c.backend_credentials, Some(CredentialsSource::Bearer { token_file: "token".into() }));
        assert!(c.backend_replace_authorization);
        let c = parse(&["--endpoints-file=f", "--backend-basic-auth-user=mpp"]).unwrap();
        assert_eq!(c.backend_credentials, Some(CredentialsSource::Basic { user: "mpp".into(), password_file: None }));
        assert!(!c.backend_replace_authorization);
    }

    #[test]
    fn inconsistent_backend_flags_name_the_flag() {
        for (args, flag) in [
            (&["--backend-cert-file=c.pem"][..], "--backend-cert-file needs --backend-key-file"),
            (&["--backend-key-file=k.pem"][..], "--backend-key-file needs"),
            (&["--backend-server-name=a b"][..], "--backend-server-name 'a b'"),
            (&["--backend-basic-auth-password-file=p"][..], "needs --backend-basic-auth-user"),
            (&["--backend-basic-auth-user=u", "--backend-bearer-token-file=t"][..], "exclude each other"),
            (&["--backend-replace-authorization"][..], "--backend-replace-authorization needs"),
        ] {
            let e = parse(&[&["--endpoints-file=f"], args].concat()).unwrap_err();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        let e = parse(&["--marathon-url", "http://m:8080"]).unwrap_err();
        assert!(e.contains("--marathon-apps"), "{e}");
        let e = parse(&[]).unwrap_err();
        assert!(e.contains("no discovery"), "{e}");
        let e = parse(&["--endpoints-file", "f", "--kube-port=-x"]).unwrap_err();
        assert!(e.contains("--kube-port '-x'"), "{e}");
        let e = parse(&["--kube-pod-label-selector", "app in (a"]).unwrap_err();
        assert!(e.contains("--kube-pod-label-selector 'app in (a'"), "{e}");
        let e = parse(&["--kube-service-name", "Prom_1"]).unwrap_err();
        assert!(e.contains("--kube-service-name 'Prom_1'"), "{e}");
        let e = parse(&["--endpoints-file", "f", "--kube-service-name", "prom"]).unwrap_err();
        assert!(e.contains("more than one discovery"), "{e}");
    }
}

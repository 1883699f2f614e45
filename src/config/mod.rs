//! The command line, in two stages: [`Args`] is what clap reads (flags and `MPP_*`
//! variables, with the original mpp's names and defaults), [`Config`] is the validated,
//! typed result the rest of the program runs on. Nothing after this module parses a string
//! from the command line again.
//!
//! Both are grouped by who uses the flags ([`flags`]), and each discovery kind declares its
//! own (`discovery/`): a new flag is a field in its group and its one use.

pub mod flags;

use clap::{ArgAction, Parser};
use rustls::pki_types::ServerName;

use crate::client::TlsOptions;
use crate::credentials::CredentialsSource;
use crate::discovery::{DiscoveryConfig, DiscoveryFlags, FlagError};
pub use flags::{BackendFlags, Bucket, Coverage, Proxy, Selection, Server};

/// The flags and environment variables, as the original mpp spells them.
#[derive(Debug, Parser)]
#[command(
    name = "mpp",
    version = crate::metrics::VERSION_TEXT,
    about = "Multi-Prometheus proxy: routes queries to one of several HA Prometheus replicas",
    long_about = "Launch a dynamically configured proxy over multiple prometheus endpoints \
                  which selects endpoints based on configurable criteria.",
    disable_version_flag = true
)]
pub struct Args {
    /// Where candidates come from: each kind's flags.
    #[command(flatten)]
    pub discovery: DiscoveryFlags,

    /// How candidates are chosen and checked.
    #[command(flatten)]
    pub selection: Selection,

    /// The request path.
    #[command(flatten)]
    pub proxy: Proxy,

    /// The listener.
    #[command(flatten)]
    pub server: Server,

    /// Routing by coverage.
    #[command(flatten)]
    pub coverage: Coverage,

    /// The client to the replicas.
    #[command(flatten)]
    pub backends: BackendFlags,

    /// OpenTelemetry tracing.
    #[command(flatten)]
    pub tracing: flags::Tracing,

    /// Log debugging information
    #[arg(short = 'V', long, env = "MPP_VERBOSE")]
    pub verbose: bool,

    /// The least severe log lines written: debug, info, warn or error (MPP_LOG, a tracing
    /// filter, wins when set)
    #[arg(long = "log.level", env = "MPP_LOG_LEVEL", value_enum, default_value_t, value_name = "LEVEL")]
    pub log_level: crate::logging::LogLevel,

    /// The log lines' format: logfmt or json (one object a line, with ts, level and msg)
    #[arg(long = "log.format", env = "MPP_LOG_FORMAT", value_enum, default_value_t, value_name = "FORMAT")]
    pub log_format: crate::logging::LogFormat,

    /// Print the version
    #[arg(short = 'v', long, action = ArgAction::Version)]
    pub version: Option<bool>,
}

/// The validated configuration that [`crate::run`] starts from, grouped by who uses it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to find candidates.
    pub discovery: DiscoveryConfig,
    /// How candidates are chosen and checked.
    pub selection: Selection,
    /// The request path's limits and options.
    pub proxy: Proxy,
    /// The listener.
    pub server: Server,
    /// Routing by coverage.
    pub coverage: Coverage,
    /// The client to the replicas.
    pub backends: Backends,
    /// Whether debug logging is on.
    pub verbose: bool,
    /// `--log.level`.
    pub log_level: crate::logging::LogLevel,
    /// `--log.format`.
    pub log_format: crate::logging::LogFormat,
    /// OpenTelemetry tracing, when `--tracing-endpoint` is given.
    pub tracing: Option<crate::telemetry::Settings>,
}

/// The client to the replicas, its flags checked together.
#[derive(Debug, Clone)]
pub struct Backends {
    /// How https connections are verified and authenticated (`insecure` also applies to
    /// discovery's own requests).
    pub tls: TlsOptions,
    /// The credentials sent to the replicas, if any.
    pub credentials: Option<CredentialsSource>,
    /// Whether mpp's credentials replace a client's own `Authorization` header.
    pub replace_authorization: bool,
    /// The most requests in flight to one replica.
    pub max_connections: u32,
}

/// A command line that parsed but does not make sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The discovery flags choose no kind, several, or one wrongly.
    #[error(transparent)]
    Discovery(#[from] FlagError),
    /// The request body limits cannot hold together.
    #[error("{0}")]
    Limits(String),
    /// The flags of the client to the replicas contradict each other.
    #[error("{0}")]
    Backend(String),
}

impl Config {
    /// Validates what clap parsed. `kube_service_name_env` is `MPP_KUBE_SERVICE_NAME`, the
    /// second name the service-name flag answers to.
    pub fn from_args(args: Args, kube_service_name_env: Option<String>) -> Result<Self, ConfigError> {
        let discovery = args.discovery.config(kube_service_name_env)?;
        let backends = Backends::from_flags(args.backends)?;
        let proxy = args.proxy;
        if proxy.max_request_body > proxy.request_body_budget || proxy.max_request_body > u64::from(u32::MAX) {
            return Err(ConfigError::Limits(format!(
                "--max-request-body {} is larger than --request-body-budget {} (or 4GiB): \
                 such bodies could never be buffered",
                proxy.max_request_body, proxy.request_body_budget
            )));
        }
        Ok(Config {
            discovery,
            selection: args.selection,
            proxy,
            server: args.server,
            coverage: args.coverage,
            backends,
            verbose: args.verbose,
            log_level: args.log_level,
            log_format: args.log_format,
            tracing: args.tracing.tracing_endpoint.map(|endpoint| crate::telemetry::Settings {
                endpoint,
                protocol: args.tracing.tracing_protocol,
                sampling_ratio: args.tracing.tracing_sampling_ratio,
            }),
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

impl Backends {
    /// Checks the TLS flags and the credentials flags, each against the others.
    fn from_flags(flags: BackendFlags) -> Result<Self, ConfigError> {
        let backend_error = |message: &str| ConfigError::Backend(message.into());
        let tls = TlsOptions {
            insecure: flags.insecure,
            ca_file: flags.backend_ca_file,
            client_cert: match (flags.backend_cert_file, flags.backend_key_file) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) => return Err(backend_error("--backend-cert-file needs --backend-key-file")),
                (None, Some(_)) => return Err(backend_error("--backend-key-file needs --backend-cert-file")),
            },
            server_name: flags
                .backend_server_name
                .map(|name| {
                    ServerName::try_from(name.clone()).map_err(|_| {
                        ConfigError::Backend(format!("--backend-server-name '{name}' is not a DNS name or IP address"))
                    })
                })
                .transpose()?,
        };
        let credentials = match (
            flags.backend_basic_auth_user,
            flags.backend_basic_auth_password_file,
            flags.backend_bearer_token_file,
        ) {
            (Some(_), _, Some(_)) => {
                return Err(backend_error(
                    "--backend-basic-auth-user and --backend-bearer-token-file exclude each other; choose one",
                ));
            }
            (None, Some(_), _) => {
                return Err(backend_error("--backend-basic-auth-password-file needs --backend-basic-auth-user"));
            }
            (Some(user), password_file, None) => Some(CredentialsSource::Basic { user, password_file }),
            (None, None, Some(token_file)) => Some(CredentialsSource::Bearer { token_file }),
            (None, None, None) => None,
        };
        if flags.backend_replace_authorization && credentials.is_none() {
            return Err(backend_error(
                "--backend-replace-authorization needs --backend-basic-auth-user or --backend-bearer-token-file",
            ));
        }
        Ok(Backends {
            tls,
            credentials,
            replace_authorization: flags.backend_replace_authorization,
            max_connections: flags.max_backend_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::strategy::Strategy;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::parse_from(std::iter::once("mpp").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original() {
        let c = parse(&["--endpoints-file", "/tmp/x"]).unwrap();
        assert_eq!(c.selection.routing_strategy, Strategy::SingleMostData);
        assert_eq!(c.selection.selection_interval, Duration::from_secs(10));
        assert!(c.proxy.affinity_options.cookies && !c.proxy.affinity_options.source_ip);
        assert_eq!(c.server.listen(), ["[::]:9090".parse().unwrap()]);
        assert_eq!(c.proxy.max_request_body, 16 << 20);
    }

    #[test]
    fn listen_addresses_are_taken_as_prometheus_takes_them_and_repeat() {
        let listen = |args: &[&str]| {
            let mut all = vec!["--endpoints-file", "/tmp/x"];
            all.extend_from_slice(args);
            parse(&all).map(|c| c.server.listen().iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(listen(&["--web.listen-address", ":9091"]).unwrap(), ["[::]:9091"]);
        assert_eq!(
            listen(&["--web.listen-address", "127.0.0.1:1", "--web.listen-address=[::1]:2"]).unwrap(),
            ["127.0.0.1:1", "[::1]:2"]
        );
        assert_eq!(listen(&["--listen-address", "127.0.0.1:1,127.0.0.2:3"]).unwrap(), ["127.0.0.1:1", "127.0.0.2:3"]);
        assert_eq!(listen(&["--port", "9095"]).unwrap(), ["[::]:9095"]);
        assert_eq!(listen(&["--port", "9095", "--web.listen-address", ":1"]).unwrap(), ["[::]:1"], "the address wins");
        let error = listen(&["--web.listen-address", "localhost"]).unwrap_err();
        assert!(error.contains("--web.listen-address") && error.contains("'localhost'"), "{error}");
    }

    #[test]
    fn tracing_flags_are_checked_and_off_by_default() {
        assert!(parse(&["--endpoints-file", "/tmp/x"]).unwrap().tracing.is_none());
        let c =
            parse(&["--endpoints-file=f", "--tracing-endpoint=https://otel:4318", "--tracing-protocol=http"]).unwrap();
        let tracing = c.tracing.unwrap();
        assert_eq!(tracing.endpoint.to_string(), "https://otel:4318/");
        assert_eq!((tracing.protocol, tracing.sampling_ratio), (crate::telemetry::Protocol::Http, 0.1));
        for (args, problem) in [
            (&["--tracing-endpoint=otel:4317"][..], "'otel:4317' is not an http:// or https:// URL"),
            (&["--tracing-endpoint=ftp://otel"][..], "'ftp://otel' is not an http:// or https:// URL"),
            (&["--tracing-endpoint=http://o", "--tracing-sampling-ratio=2"][..], "'2' is not a ratio from 0 to 1"),
            (&["--tracing-endpoint=http://o", "--tracing-protocol=thrift"][..], "'thrift'"),
        ] {
            let e = parse(&[&["--endpoints-file=f"], args].concat()).unwrap_err();
            assert!(e.contains(problem), "{e}");
        }
    }

    #[test]
    fn serving_threads_default_to_one_per_cpu_less_one() {
        for (cpus, threads) in [(1, 1), (2, 1), (3, 2), (4, 3), (64, 63)] {
            assert_eq!(flags::default_serving_threads(cpus), threads, "{cpus} CPUs");
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = parse(&["--endpoints-file", "/tmp/x"]).unwrap().server.serving_threads;
        assert_eq!(threads, flags::default_serving_threads(cpus));
        assert_eq!(parse(&["--endpoints-file", "/tmp/x", "--serving-threads", "3"]).unwrap().server.serving_threads, 3);
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
        assert_eq!(c.backends.tls.ca_file, Some(PathBuf::from("ca.pem")));
        assert_eq!(c.backends.tls.client_cert, Some(("c.pem".into(), "k.pem".into())));
        assert_eq!(c.backends.tls.server_name, Some(ServerName::try_from("prometheus.internal").unwrap()));
        assert_eq!(c.backends.credentials, Some(CredentialsSource::Bearer { token_file: "token".into() }));
        assert!(c.backends.replace_authorization);
        let c = parse(&["--endpoints-file=f", "--backend-basic-auth-user=mpp"]).unwrap();
        assert_eq!(c.backends.credentials, Some(CredentialsSource::Basic { user: "mpp".into(), password_file: None }));
        assert!(!c.backends.replace_authorization);
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

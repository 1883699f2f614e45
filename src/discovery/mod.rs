//! Discovery: where the *candidates* (the backends that may serve) come from. Each source
//! has its own file; [`Discovery`] is what the selection loop calls once a round, plus a
//! signal (`changed`) a source sends when it knows its set has changed, so that the loop
//! runs a round at once instead of waiting for the interval. Keeping the last good set when a
//! source fails is the selection loop's job, not the source's.
//!
//! A kind of discovery is one file: its flags (flattened into the command line), their
//! validation into its configuration, and its [`Source`]. Adding a kind is that file plus a
//! line in each list of kinds: [`DiscoveryFlags`], [`DiscoveryFlags::config`],
//! [`DiscoveryConfig`] and [`Discovery::start`] (and `fuzzing` for its parsers).

mod dcos;
mod dns;
pub mod file;
pub mod kubernetes;
pub mod marathon;

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::client::HttpClient;
use crate::metrics::Metrics;

use file::{FileConfig, FileDiscovery, FileFlags};
use kubernetes::{KubernetesConfig, KubernetesDiscovery, KubernetesFlags};
use marathon::{MarathonConfig, MarathonDiscovery, MarathonFlags};

/// Every kind's flags, each declared in its kind's file.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryFlags {
    /// `--kube-*` and `--kubeconfig`.
    #[command(flatten)]
    pub kubernetes: KubernetesFlags,
    /// `--marathon-*`.
    #[command(flatten)]
    pub marathon: MarathonFlags,
    /// `--endpoints-file`.
    #[command(flatten)]
    pub file: FileFlags,
}

/// Discovery flags that do not make sense together (or one that does not on its own).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    /// No kind's flags are given.
    #[error(
        "no discovery configured: set --endpoints-file, --marathon-url with --marathon-apps, \
         or --kube-service-name / --kube-pod-label-selector"
    )]
    NoDiscovery,
    /// The flags of more than one kind are given (the kinds' flags, listed).
    #[error("more than one discovery configured ({0}); choose one")]
    ManyDiscoveries(String),
    /// A kind's own flags are wrong; the message names the flag and the value.
    #[error("{0}")]
    Invalid(String),
}

impl DiscoveryFlags {
    /// The one kind the flags configure, validated. `kube_service_name_env` is
    /// `MPP_KUBE_SERVICE_NAME`, the second variable the Kubernetes service name is read from.
    pub fn config(self, kube_service_name_env: Option<String>) -> Result<DiscoveryConfig, FlagError> {
        let configured = [
            (kubernetes::CHOSEN_BY, self.kubernetes.config(kube_service_name_env)?.map(DiscoveryConfig::Kubernetes)),
            (marathon::CHOSEN_BY, self.marathon.config()?.map(DiscoveryConfig::Marathon)),
            (file::CHOSEN_BY, self.file.config().map(DiscoveryConfig::File)),
        ];
        let mut configured: Vec<(&str, DiscoveryConfig)> =
            configured.into_iter().filter_map(|(flag, config)| Some((flag, config?))).collect();
        match configured.len() {
            0 => Err(FlagError::NoDiscovery),
            1 => Ok(configured.remove(0).1),
            // Named the endpoints file first, as mpp always has.
            _ => Err(FlagError::ManyDiscoveries(
                configured.iter().rev().map(|(flag, _)| *flag).collect::<Vec<_>>().join(", "),
            )),
        }
    }
}

impl From<String> for FlagError {
    fn from(message: String) -> Self {
        FlagError::Invalid(message)
    }
}

/// Where candidates come from.
#[derive(Debug, Clone)]
pub enum DiscoveryConfig {
    /// An endpoints file, one backend URL or DNS name per line.
    File(FileConfig),
    /// Marathon apps' tasks.
    Marathon(MarathonConfig),
    /// A Kubernetes service or pods.
    Kubernetes(KubernetesConfig),
}

/// A discovery source that failed this round.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The endpoints file could not be read.
    #[error("cannot read endpoints file '{path}': {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The endpoints file holds no valid endpoint (while being rewritten, say).
    #[error("endpoints file '{path}' lists no valid endpoint")]
    Empty { path: PathBuf },
    /// The Kubernetes API could not be used (or the watch has not listed yet).
    #[error("Kubernetes: {0}")]
    Kubernetes(String),
    /// Marathon (or the DC/OS login) could not be asked or refused.
    #[error("Marathon: {0}")]
    Marathon(String),
    /// The endpoints file cannot be watched for changes.
    #[error("cannot watch endpoints file '{path}' for changes: {detail}")]
    Watch { path: PathBuf, detail: String },
}

/// One kind's running discovery.
pub trait Source: Send + Sync {
    /// The current candidates, in a stable order.
    fn candidates(&mut self) -> BoxFuture<'_, Result<Vec<Backend>, DiscoveryError>>;

    /// What the source is, for the log and the status page (never a secret).
    fn describe(&self) -> String;

    /// What went wrong with parts of the last answer that still counts (a DNS name that did
    /// not resolve), a line each, for the status page.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The configured source of candidates.
pub struct Discovery(Box<dyn Source>);

impl Discovery {
    /// Starts the configured source. Fails when the source cannot work at all (an endpoints
    /// file that does not exist at start-up, say), so that a mistake shows at once.
    /// `changed` is signalled whenever the source sees its set change.
    /// `client` is the discovery client, used to ask Marathon and the DC/OS login.
    pub async fn start(
        config: &DiscoveryConfig,
        client: &HttpClient,
        changed: mpsc::Sender<()>,
        metrics: &Metrics,
    ) -> Result<Self, DiscoveryError> {
        let source: Box<dyn Source> = match config {
            DiscoveryConfig::File(file) => Box::new(FileDiscovery::start(file.clone(), changed, metrics)?),
            DiscoveryConfig::Marathon(marathon) => Box::new(MarathonDiscovery::new(marathon.clone(), client.clone())),
            DiscoveryConfig::Kubernetes(kubernetes) => {
                Box::new(KubernetesDiscovery::start(kubernetes.clone(), changed).await?)
            }
        };
        Ok(Discovery(source))
    }

    /// The current candidates, in a stable order.
    pub async fn candidates(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
        self.0.candidates().await
    }

    /// What the source is, for the log and the status page.
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// What went wrong with parts of the last answer, a line each.
    pub fn problems(&self) -> Vec<String> {
        self.0.problems()
    }
}

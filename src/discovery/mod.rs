//! Discovery: where the *candidates* (the backends that may serve) come from. Each source
//! has its own file; [`Discovery`] is what the selection loop calls once a round, plus a
//! signal (`changed`) a source sends when it knows its set has changed, so that the loop
//! runs a round at once instead of waiting for the interval. Keeping the last good set when a
//! source fails is the selection loop's job, not the source's.

mod dcos;
mod file;
mod kubernetes;
mod marathon;

use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::client::HttpClient;

pub use dcos::PrincipalSecret;
pub use file::{FileDiscovery, parse_endpoints};
pub use kubernetes::{KubernetesConfig, KubernetesDiscovery, LabelSelector, PortRef, pod_backend, slice_backends};
pub use marathon::{MarathonConfig, MarathonDiscovery, candidates_from_tasks, redact_user_info};

/// Where candidates come from.
#[derive(Debug, Clone)]
pub enum DiscoveryConfig {
    /// An endpoints file, one backend URL per line.
    File(PathBuf),
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

/// The configured source of candidates.
pub enum Discovery {
    /// An endpoints file, re-read every round and whenever it changes.
    File(FileDiscovery),
    /// Marathon apps, polled every round.
    Marathon(Box<MarathonDiscovery>),
    /// A Kubernetes service's endpoints or a set of pods, watched.
    Kubernetes(Box<KubernetesDiscovery>),
}

impl Discovery {
    /// Starts the configured source. Fails when the source cannot work at all (an endpoints
    /// file that does not exist at start-up, say), so that a mistake shows at once.
    /// `changed` is signalled whenever the source sees its set change.
    /// `client` is the backend client, also used to ask Marathon and the DC/OS login.
    pub async fn start(
        config: &DiscoveryConfig,
        client: &HttpClient,
        changed: mpsc::Sender<()>,
    ) -> Result<Self, DiscoveryError> {
        match config {
            DiscoveryConfig::File(path) => Ok(Discovery::File(FileDiscovery::start(path.clone(), changed)?)),
            DiscoveryConfig::Marathon(marathon) => {
                Ok(Discovery::Marathon(Box::new(MarathonDiscovery::new(marathon.clone(), client.clone()))))
            }
            DiscoveryConfig::Kubernetes(kubernetes) => {
                Ok(Discovery::Kubernetes(Box::new(KubernetesDiscovery::start(kubernetes.clone(), changed).await?)))
            }
        }
    }

    /// The current candidates, in a stable order.
    pub async fn candidates(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
        match self {
            Discovery::File(file) => file.candidates().await,
            Discovery::Marathon(marathon) => marathon.candidates().await,
            Discovery::Kubernetes(kubernetes) => kubernetes.candidates(),
        }
    }

    /// What the source is, for the log and the status page.
    pub fn describe(&self) -> String {
        match self {
            Discovery::File(file) => format!("endpoints file {}", file.path().display()),
            Discovery::Marathon(marathon) => {
                let c = marathon.config();
                let apps: Vec<String> = c.apps.iter().map(|a| format!("/{a}")).collect();
                let auth = if c.secret.is_some() { " (DC/OS login)" } else { "" };
                format!("Marathon {} apps {}{auth}", c.url, apps.join(","))
            }
            Discovery::Kubernetes(kubernetes) => kubernetes.describe(),
        }
    }
}

//! Kubernetes discovery, following the cluster live: a watch (kube's watcher and reflector,
//! list then watch, with backoff) on the service's EndpointSlices (`--kube-service-name`) or
//! on the pods a label selector names (`--kube-pod-label-selector`). The watch runs in its own
//! task and keeps a store; every change signals the selection loop, which reads the store.
//! While the API server is unreachable or refuses, the store keeps the last known objects and
//! the error is reported each round, so the selection keeps the last good set.

mod selector;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::{DiscoveryError, Source};
use crate::backend::Backend;
pub use selector::LabelSelector;

/// The flags that choose this kind, for messages.
pub const CHOSEN_BY: &str = "--kube-service-name/--kube-pod-label-selector";

/// Kubernetes' flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KubernetesFlags {
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
}

/// The label Kubernetes puts on a service's EndpointSlices.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What to watch, validated from the flags.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// `--kubeconfig`; in-cluster configuration when absent.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-namespace`.
    pub namespace: String,
    /// The service or the pods.
    pub target: Target,
    /// `--kube-port`; the first TCP port when absent.
    pub port: Option<PortRef>,
}

impl KubernetesFlags {
    /// Validates the Kubernetes flags; `None` when neither a service nor a selector is given.
    /// `service_name_env` is `MPP_KUBE_SERVICE_NAME`, the second variable the service name is
    /// read from (clap takes one per flag).
    pub fn config(self, service_name_env: Option<String>) -> Result<Option<KubernetesConfig>, String> {
        let KubernetesFlags {
            kubeconfig,
            kube_service_name: service,
            kube_pod_label_selector: selector,
            kube_namespace: namespace,
            kube_port: port,
        } = self;
        let service = service.or(service_name_env).filter(|s| !s.is_empty());
        let port = port.as_deref().map(PortRef::parse).transpose()?;
        let target = match (service, selector.filter(|s| !s.trim().is_empty())) {
            // The service takes precedence, as in the original.
            (Some(service), _) => {
                let valid = service.len() <= 63
                    && service.starts_with(|c: char| c.is_ascii_lowercase())
                    && service.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !service.ends_with('-');
                if !valid {
                    return Err(format!(
                        "--kube-service-name '{service}' is not a valid service name (lowercase letters, digits and '-')"
                    ));
                }
                Target::Service(service)
            }
            (None, Some(selector)) => Target::Pods(
                LabelSelector::parse(&selector).map_err(|e| format!("--kube-pod-label-selector '{selector}': {e}"))?,
            ),
            (None, None) => return Ok(None),
        };
        let namespace_ok = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !namespace_ok {
            return Err(format!("--kube-namespace '{namespace}' is not a valid namespace"));
        }
        Ok(Some(KubernetesConfig { kubeconfig, namespace, target, port }))
    }
}

/// The objects whose addresses are the replicas.
#[derive(Debug, Clone)]
pub enum Target {
    /// A service's EndpointSlices (ready endpoints only).
    Service(String),
    /// Running, ready pods matching a selector.
    Pods(LabelSelector),
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A port name (of the container port, or of the EndpointSlice port).
    Name(String),
}

impl PortRef {
    /// Parses `--kube-port`: a number 1-65535 or an IANA service name.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u16>() {
                Ok(n) if n > 0 => Ok(PortRef::Number(n)),
                _ => Err(format!("--kube-port '{text}' is neither a port number (1-65535) nor a port name")),
            };
        }
        let valid = text.len() <= 15
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && text.bytes().any(|b| b.is_ascii_lowercase())
            && !text.starts_with('-')
            && !text.ends_with('-')
            && !text.contains("--");
        if valid {
            Ok(PortRef::Name(text.to_string()))
        } else {
            Err(format!("--kube-port '{text}' is neither a port number (1-65535) nor a port name"))
        }
    }
}

/// The watch's health, shared between its task and the selection loop.
#[derive(Default)]
struct WatchState {
    /// The first full list has arrived.
    listed: bool,
    /// The last error, until the watch works again.
    error: Option<String>,
}

enum Watched {
    Slices(Store<EndpointSlice>),
    Pods(Store<Pod>),
}

/// Follows the cluster; see the module documentation.
pub struct KubernetesDiscovery {
    config: KubernetesConfig,
    store: Watched,
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubernetesDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubernetesDiscovery {
    /// Builds the client (a kubeconfig that cannot be read or parsed, or no in-cluster
    /// configuration, is an error now) and starts the watch; it does not wait for the API.
    pub async fn start(config: KubernetesConfig, changed: mpsc::Sender<()>) -> Result<Self, DiscoveryError> {
        let client = client(&config).await?;
        let state = Arc::new(Mutex::new(WatchState::default()));
        let (store, task) = match &config.target {
            Target::Service(name) => {
                let api: Api<EndpointSlice> = Api::namespaced(client, &config.namespace);
                let filter = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
                let (reader, writer) = reflector::store();
                let task = tokio::spawn(follow(api, filter, writer, state.clone(), changed));
                (Watched::Slices(reader), task)
            }
            Target::Pods(selector) => {
                let api: Api<Pod> = Api::namespaced(client, &config.namespace);
                let filter = watcher::Config::default().labels(&selector.to_string());
                let (reader, writer) = reflector::store();
                let task = tokio::spawn(follow(api, filter, writer, state.clone(), changed));
                (Watched::Pods(reader), task)
            }
        };
        Ok(KubernetesDiscovery { config, store, state, task })
    }

    /// The replicas in the store, sorted by URL; an error while the watch is failing or has
    /// not listed yet (the selection then keeps its last good set).
    fn listed(&self) -> Result<Vec<Backend>, DiscoveryError> {
        {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(error) = &state.error {
                return Err(DiscoveryError::Kubernetes(error.clone()));
            }
            if !state.listed {
                return Err(DiscoveryError::Kubernetes("waiting for the first list from the API server".into()));
            }
        }
        let port = self.config.port.as_ref();
        let mut backends: Vec<Backend> = match &self.store {
            Watched::Slices(store) => {
                let Target::Service(service) = &self.config.target else {
                    unreachable!("slices are watched for a service")
                };
                store
                    .state()
                    .iter()
                    .filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(service))
                    .flat_map(|s| slice_backends(s, port))
                    .collect()
            }
            Watched::Pods(store) => {
                let Target::Pods(selector) = &self.config.target else {
                    unreachable!("pods are watched for a selector")
                };
                store.state().iter().filter_map(|p| pod_backend(p, selector, port)).collect()
            }
        };
        backends.sort_by(|a, b| a.url().cmp(b.url()));
        backends.dedup();
        Ok(backends)
    }
}

impl Source for KubernetesDiscovery {
    fn candidates(&mut self) -> BoxFuture<'_, Result<Vec<Backend>, DiscoveryError>> {
        Box::pin(std::future::ready(self.listed()))
    }

    /// What is watched, for the log and the status page.
    fn describe(&self) -> String {
        let port = match &self.config.port {
            Some(PortRef::Number(n)) => format!(", port {n}"),
            Some(PortRef::Name(n)) => format!(", port '{n}'"),
            None => String::new(),
        };
        match &self.config.target {
            Target::Service(name) => format!("Kubernetes service {}/{name}{port}", self.config.namespace),
            Target::Pods(selector) => format!("Kubernetes pods {{{selector}}} in {}{port}", self.config.namespace),
        }
    }
}

async fn client(config: &KubernetesConfig) -> Result<kube::Client, DiscoveryError> {
    let start_error = |detail: String| DiscoveryError::Kubernetes(detail);
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| start_error(format!("cannot read kubeconfig '{}': {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| start_error(format!("cannot use kubeconfig '{}': {e}", path.display())))?
        }
        None => kube::Config::incluster()
            .map_err(|e| start_error(format!("no --kubeconfig given and no in-cluster configuration: {e}")))?,
    };
    kube::Client::try_from(kube_config).map_err(|e| start_error(format!("cannot build the Kubernetes client: {e}")))
}

/// Backoff between two watches after a failure: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LAST: Duration = Duration::from_secs(30);

/// Runs the watch forever, recording its health and signalling every change. After a
/// failure it starts over with a fresh list (after a backoff), so that success shows at once
/// (a resumed watch on a quiet cluster would say nothing for minutes); the store keeps the
/// last known objects until the new list is complete.
async fn follow<K>(
    api: Api<K>,
    filter: watcher::Config,
    mut writer: reflector::store::Writer<K>,
    state: Arc<Mutex<WatchState>>,
    changed: mpsc::Sender<()>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut retry = RETRY_FIRST;
    loop {
        let events = watcher(api.clone(), filter.clone());
        futures_util::pin_mut!(events);
        while let Some(event) = events.next().await {
            let mut shared = state.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(event) => {
                    retry = RETRY_FIRST;
                    if let Some(error) = shared.error.take() {
                        tracing::info!(previous_error = %error, "Kubernetes API reachable again");
                    }
                    writer.apply_watcher_event(&event);
                    let change = match event {
                        watcher::Event::InitDone => {
                            shared.listed = true;
                            true
                        }
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => true,
                        watcher::Event::Init | watcher::Event::InitApply(_) => false,
                    };
                    drop(shared);
                    if change {
                        let _ = changed.try_send(());
                    }
                }
                Err(error) => {
                    let text = crate::error::error_chain(&error);
                    if shared.error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, retry_in = ?retry, "Kubernetes watch failed; keeping the last known replicas");
                    }
                    shared.error = Some(text);
                    drop(shared);
                    let _ = changed.try_send(());
                    break;
                }
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_LAST);
    }
}

/// The ready endpoints of one EndpointSlice.
pub fn slice_backends(slice: &EndpointSlice, port: Option<&PortRef>) -> Vec<Backend> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let number = match port {
        Some(PortRef::Number(n)) => Some(i32::from(*n)),
        Some(PortRef::Name(name)) => ports.iter().find(|p| p.name.as_deref() == Some(name)).and_then(|p| p.port),
        None => ports.iter().find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP")).and_then(|p| p.port),
    };
    let Some(number) = number.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        // An unset `ready` means unknown, which Kubernetes says to treat as ready.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|address| backend(address, number))
        .collect()
}

/// A pod's backend, if it matches the selector, runs, is ready and has the port.
pub fn pod_backend(pod: &Pod, selector: &LabelSelector, port: Option<&PortRef>) -> Option<Backend> {
    let empty = Default::default();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    if pod.metadata.deletion_timestamp.is_some() || !selector.matches(labels) {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready =
        status.conditions.as_deref().unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
    if status.phase.as_deref() != Some("Running") || !ready {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let container_ports = pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.as_deref().unwrap_or_default());
    let number = match port {
        Some(PortRef::Number(n)) => i32::from(*n),
        Some(PortRef::Name(name)) => {
            container_ports.clone().find(|p| p.name.as_deref() == Some(name.as_str()))?.container_port
        }
        None => {
            container_ports.clone().find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))?.container_port
        }
    };
    backend(ip, u16::try_from(number).ok().filter(|n| *n > 0)?)
}

fn backend(host: &str, port: u16) -> Option<Backend> {
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    Backend::parse(&format!("http://{host}:{port}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_by_number_and_name() {
        assert_eq!(PortRef::parse("9090").unwrap(), PortRef::Number(9090));
        assert_eq!(PortRef::parse("web").unwrap(), PortRef::Name("web".into()));
        for bad in ["0", "70000", "Web", "-x", "a--b", "sixteen-chars-xx"] {
            assert!(PortRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pods_must_match_run_and_be_ready() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "prometheus-0", "labels": {"app": "prometheus"}},
            "spec": {"containers": [{"name": "p", "ports": [{"name": "web", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": "fd00::5", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let selector = LabelSelector::parse("app=prometheus").unwrap();
        assert_eq!(pod_backend(&pod, &selector, None).unwrap().url(), "http://[fd00::5]:9090");
        assert_eq!(
            pod_backend(&pod, &selector, Some(&PortRef::Name("web".into()))).unwrap().url(),
            "http://[fd00::5]:9090"
        );
        assert!(pod_backend(&pod, &selector, Some(&PortRef::Name("grpc".into()))).is_none());
        assert!(pod_backend(&pod, &LabelSelector::parse("app=grafana").unwrap(), None).is_none());
        let mut unready = pod.clone();
        unready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(pod_backend(&unready, &selector, None).is_none());
    }
}

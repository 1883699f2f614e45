//! Every manifest in `deploy/kubernetes/` parses into its k8s-openapi type (the PodMonitor into
//! the Prometheus Operator's fields), with no field the type does not know (a misspelled
//! field would otherwise be dropped silently), the PodMonitor scrapes mpp's own metrics, the RBAC
//! grants exactly what mpp reads, and mpp's pods run the image `make image` tags, under the
//! runtime's default seccomp profile, spread over nodes, with a disruption budget.

use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

fn documents() -> Vec<(String, serde_yaml::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            docs.push((path.file_name().unwrap().to_string_lossy().into_owned(), value));
        }
    }
    docs
}

/// Parses into `T` and checks that writing it back loses nothing.
fn parse<T: DeserializeOwned + serde::Serialize>(file: &str, value: &serde_yaml::Value) -> T {
    let parsed: T = serde_yaml::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let original = serde_json::to_value(value).unwrap();
    let again = serde_json::to_value(&parsed).unwrap();
    assert_eq!(again, original, "{file}: a field is unknown to the type (misspelled?)");
    parsed
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let docs = documents();
    assert!(docs.len() >= 8, "expected the mpp and Prometheus manifests, found {}", docs.len());
    let (mut mpp_pods, mut budgeted, mut pod_monitors) = (None, None, Vec::new());
    let mut ports = Vec::new();
    for (file, value) in &docs {
        match value["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind")) {
            "Deployment" => {
                let d: Deployment = parse(file, value);
                let spec = d.spec.unwrap();
                assert_eq!(spec.replicas, Some(2));
                let pod = spec.template.spec.unwrap();
                let container = &pod.containers[0];
                let probe = container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
                assert_eq!(probe.path.as_deref(), Some("/mpp/ready"));
                assert!(container.resources.as_ref().unwrap().requests.is_some());
                // scripts/image.sh's default name for the binary of this version.
                let image = format!("localhost/mpp:{}", env!("CARGO_PKG_VERSION"));
                assert_eq!(container.image.as_deref(), Some(image.as_str()), "{file}: the image `make image` tags");
                let security = pod.security_context.unwrap();
                assert_eq!(security.run_as_non_root, Some(true));
                assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
                let spread = pod.topology_spread_constraints.unwrap_or_default();
                let by_node = spread.iter().find(|c| c.topology_key == "kubernetes.io/hostname");
                let by_node = by_node.unwrap_or_else(|| panic!("{file}: mpp pods are not spread over nodes"));
                assert_eq!(by_node.when_unsatisfiable, "DoNotSchedule");
                assert_eq!(by_node.node_taints_policy.as_deref(), Some("Honor"), "cordoned nodes must not count");
                assert_eq!(by_node.label_selector, Some(spec.selector.clone()));
                ports = container.ports.clone().unwrap_or_default();
                mpp_pods = Some(spec.selector);
            }
            "PodDisruptionBudget" => {
                let spec = parse::<PodDisruptionBudget>(file, value).spec.unwrap();
                assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
                budgeted = spec.selector;
            }
            "StatefulSet" => assert_eq!(parse::<StatefulSet>(file, value).spec.unwrap().replicas, Some(2)),
            "Service" => drop(parse::<Service>(file, value)),
            "ServiceAccount" => drop(parse::<ServiceAccount>(file, value)),
            "ConfigMap" => drop(parse::<ConfigMap>(file, value)),
            "PodMonitor" => pod_monitors.push(parse::<PodMonitor>(file, value)),
            "RoleBinding" => drop(parse::<RoleBinding>(file, value)),
            "Role" => {
                let rules = parse::<Role>(file, value).rules.unwrap();
                assert_eq!(rules.len(), 1, "mpp needs one rule");
                assert_eq!(rules[0].resources.as_deref(), Some(&["endpointslices".to_string()][..]));
                assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
            }
            other => panic!("{file}: no check for kind {other}"),
        }
    }
    assert!(mpp_pods.is_some(), "no mpp Deployment");
    assert_eq!(budgeted, mpp_pods, "the disruption budget selects exactly mpp's pods");
    let [monitor] = &pod_monitors[..] else { panic!("expected one PodMonitor, found {}", pod_monitors.len()) };
    assert_eq!(Some(&monitor.spec.selector), mpp_pods.as_ref(), "the PodMonitor selects exactly mpp's pods");
    let [endpoint] = &monitor.spec.pod_metrics_endpoints[..] else { panic!("one endpoint: mpp's own metrics") };
    assert_eq!(endpoint.path.as_deref(), Some("/mpp/metrics"), "/metrics is the replicas'");
    assert!(
        ports.iter().any(|p| p.name.as_deref() == Some(endpoint.port.as_str())),
        "the port is mpp's container port"
    );
}

/// A PodMonitor, as the Prometheus Operator's API (`monitoring.coreos.com/v1`) defines the
/// fields used here; any other field fails the parse, as k8s-openapi's types do.
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: PodMonitorSpec,
}

#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMetricsEndpoint {
    port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
}

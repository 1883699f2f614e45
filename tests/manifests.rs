//! Every manifest in `deploy/kubernetes/` parses into its k8s-openapi type, with no field the
//! type does not know (a misspelled field would otherwise be dropped silently), and the RBAC
//! grants exactly what mpp reads.

use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
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
    assert!(docs.len() >= 7, "expected the mpp and Prometheus manifests, found {}", docs.len());
    for (file, value) in &docs {
        match value["kind"].as_str().unwrap_or_else(|| panic!("{file}: a document without kind")) {
            "Deployment" => {
                let d: Deployment = parse(file, value);
                let spec = d.spec.unwrap();
                assert_eq!(spec.replicas, Some(2));
                let container = &spec.template.spec.unwrap().containers[0];
                let probe = container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
                assert_eq!(probe.path.as_deref(), Some("/mpp/health"));
                assert!(container.resources.as_ref().unwrap().requests.is_some());
            }
            "StatefulSet" => assert_eq!(parse::<StatefulSet>(file, value).spec.unwrap().replicas, Some(2)),
            "Service" => drop(parse::<Service>(file, value)),
            "ServiceAccount" => drop(parse::<ServiceAccount>(file, value)),
            "ConfigMap" => drop(parse::<ConfigMap>(file, value)),
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
}

//! What the Kubernetes API sends: Pods and EndpointSlices as JSON, and label selectors.
//! Never panics; every candidate is an http URL that parses again.
#![no_main]

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use mpp::fuzzing::{LabelSelector, PortRef, pod_backend, slice_backends};

fuzz_target!(|data: &[u8]| {
    let ports = [None, Some(PortRef::Name("web".into())), Some(PortRef::Number(9090))];
    if let Ok(pod) = serde_json::from_slice::<Pod>(data) {
        let selector = LabelSelector::parse("app=prometheus,tier notin (canary),!x").expect("valid selector");
        for port in &ports {
            if let Some(b) = pod_backend(&pod, &selector, port.as_ref()) {
                mpp::fuzzing::Backend::parse(b.url()).expect("a candidate URL parses again");
            }
        }
    }
    if let Ok(slice) = serde_json::from_slice::<EndpointSlice>(data) {
        for port in &ports {
            for b in slice_backends(&slice, port.as_ref()) {
                mpp::fuzzing::Backend::parse(b.url()).expect("a candidate URL parses again");
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(selector) = LabelSelector::parse(text) {
            let _ = selector.matches(&Default::default());
        }
    }
});

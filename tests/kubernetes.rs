//! Kubernetes discovery against a fake API server (list and watch of k8s-openapi objects,
//! bearer-token auth), in front of real Prometheus replicas.

mod common;

use std::time::Duration;

use common::kubernetes::{FakeKubernetes, pod, slice};
use common::load::Load;
use common::{Mpp, Prometheus, get, wait_until};

fn port(p: &Prometheus) -> u16 {
    p.url().rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_uses_the_ready_endpoints_of_that_service_only() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let api = FakeKubernetes::start().await;
    api.apply_slice(&slice("monitoring", "prometheus-a", "prometheus", port(&a), true));
    api.apply_slice(&slice("monitoring", "prometheus-b", "prometheus", port(&b), true));
    api.apply_slice(&slice("monitoring", "prometheus-c", "prometheus", 1, false));
    api.apply_slice(&slice("monitoring", "grafana", "grafana", 2, true));
    api.apply_slice(&slice("default", "prometheus-elsewhere", "prometheus", 3, true));
    let kubeconfig = api.kubeconfig();
    let mpp = Mpp::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--kube-namespace",
        "monitoring",
        "--kube-service-name",
        "prometheus",
        "--routing-strategy",
        "random",
    ])
    .await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    let status = mpp.status().await;
    assert_eq!(status["candidates"].as_array().unwrap().len(), 2, "{status}");
    assert!(api.label_selectors().contains(&"kubernetes.io/service-name=prometheus".to_string()));
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_mode_uses_running_ready_pods_the_selector_names_in_the_namespace() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let api = FakeKubernetes::start().await;
    let labels = [("app", "prometheus"), ("tier", "monitoring")];
    api.apply_pod(&pod("monitoring", "prometheus-0", &labels, port(&a), true));
    api.apply_pod(&pod("monitoring", "prometheus-1", &labels, port(&b), true));
    api.apply_pod(&pod("monitoring", "prometheus-2", &labels, 1, false));
    api.apply_pod(&pod("monitoring", "prometheus-canary", &[("app", "prometheus"), ("tier", "canary")], 2, true));
    api.apply_pod(&pod("monitoring", "grafana-0", &[("app", "grafana")], 3, true));
    api.apply_pod(&pod("other", "prometheus-0", &labels, 4, true));
    let kubeconfig = api.kubeconfig();
    let mpp = Mpp::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--kube-namespace",
        "monitoring",
        "--kube-pod-label-selector",
        "app=prometheus, tier notin (canary), !deprecated",
        "--kube-port",
        "web",
        "--routing-strategy",
        "random",
    ])
    .await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    assert_eq!(mpp.status().await["candidates"].as_array().unwrap().len(), 2);
    assert!(api.label_selectors().iter().any(|s| s.contains("tier notin (canary)")), "{:?}", api.label_selectors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_added_and_removed_are_followed_within_seconds_without_client_errors() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let api = FakeKubernetes::start().await;
    let labels = [("app", "prometheus")];
    api.apply_pod(&pod("default", "prometheus-0", &labels, port(&a), true));
    let kubeconfig = api.kubeconfig();
    // An hour between rounds: only the watch can explain a quick change.
    let mpp = Mpp::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--kube-pod-label-selector",
        "app=prometheus",
        "--routing-strategy",
        "random",
        "--selection-interval",
        "1h",
    ])
    .await;
    mpp.wait_selected(&[&a.url()]).await;
    let load = Load::start(&mpp, 2);

    api.apply_pod(&pod("default", "prometheus-1", &labels, port(&b), true));
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    wait_until("the new replica to serve", Duration::from_secs(5), || async {
        get(&mpp.url("/api/v1/query?query=up")).await.is_ok_and(|r| r.served_by() == Some(b.url()))
    })
    .await;
    api.delete_pod("default", "prometheus-0");
    mpp.wait_selected(&[&b.url()]).await;
    // A pod turning unready leaves too.
    api.apply_pod(&pod("default", "prometheus-0", &labels, port(&a), true));
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    api.apply_pod(&pod("default", "prometheus-1", &labels, port(&b), false));
    mpp.wait_selected(&[&a.url()]).await;
    let outcomes = load.finish().await;
    assert!(outcomes.len() > 20, "too little load: {}", outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_or_revoked_token_keeps_the_last_set_and_recovers() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let api = FakeKubernetes::start().await;
    api.apply_slice(&slice("default", "prometheus-a", "prometheus", port(&a), true));
    let kubeconfig = api.kubeconfig();
    let mpp = Mpp::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--kube-service-name",
        "prometheus",
        "--selection-interval",
        "300ms",
    ])
    .await;
    mpp.wait_selected(&[&a.url()]).await;
    let load = Load::start(&mpp, 2);

    for (break_it, expected) in [(0, "503"), (1, "401")] {
        if break_it == 0 {
            api.set_outage(true)
        } else {
            api.set_revoked(true)
        }
        wait_until(&format!("the status to show the API error ({expected})"), Duration::from_secs(10), || async {
            mpp.status().await["discovery_error"].as_str().is_some_and(|e| e.contains("Kubernetes"))
        })
        .await;
        assert_eq!(mpp.selected().await, vec![a.url()], "the last known set is kept");
        if break_it == 0 {
            api.set_outage(false)
        } else {
            api.set_revoked(false)
        }
        wait_until("the API error to clear", Duration::from_secs(15), || async {
            mpp.status().await["discovery_error"].is_null()
        })
        .await;
    }
    api.apply_slice(&slice("default", "prometheus-b", "prometheus", port(&b), true));
    wait_until("a change after the outage to be seen", Duration::from_secs(10), || async {
        mpp.status().await["candidates"].as_array().unwrap().len() == 2
    })
    .await;
    let outcomes = load.finish().await;
    assert!(outcomes.len() > 20, "too little load: {}", outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_list_delays_accepting_instead_of_failing_the_first_requests() {
    let replica = Prometheus::start().await;
    let api = FakeKubernetes::start().await;
    api.apply_slice(&slice("monitoring", "prometheus-a", "prometheus", port(&replica), true));
    api.set_list_delay(Duration::from_millis(1500));
    let kubeconfig = api.kubeconfig();
    let mpp = Mpp::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--kube-namespace",
        "monitoring",
        "--kube-service-name",
        "prometheus",
    ])
    .await;
    // Sent at once, while the first list is still on its way: they wait, then succeed.
    let started = std::time::Instant::now();
    let url = mpp.url("/api/v1/query?query=up");
    let early = (0..10).map(|_| get(&url));
    for answer in futures_util::future::join_all(early).await {
        let answer = answer.expect("answered");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert!(started.elapsed() >= Duration::from_millis(1400), "answered before the list arrived?");
    let ready = get(&mpp.url("/mpp/ready")).await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.text());
}

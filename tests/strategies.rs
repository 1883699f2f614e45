//! Each routing strategy chooses as specified, against real Prometheus replicas holding
//! different amounts of data.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Mpp, Prometheus, endpoints_file, get, wait_until};

const QUERY: &str = "/api/v1/query?query=up";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_most_data_serves_only_from_the_replica_with_most_samples() {
    let older = Prometheus::start().await;
    wait_until("the first replica to ingest a few scrapes", Duration::from_secs(20), || async {
        older.samples().await > 500.0
    })
    .await;
    let younger = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[younger.url(), older.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--selection-interval", "1s"]).await;

    mpp.wait_selected(&[&older.url()]).await;
    assert!(older.samples().await > younger.samples().await);
    for _ in 0..20 {
        let answer = get(&mpp.url(QUERY)).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.served_by(), Some(older.url()));
        // One replica selected: no affinity cookie is needed.
        assert_eq!(answer.route_cookie(), None);
    }
    let status = mpp.status().await;
    assert_eq!(status["strategy"], "single-most-data");
    let samples = |i: usize| status["candidates"][i]["samples"].as_f64().unwrap_or_else(|| panic!("{status}"));
    assert!(samples(1) > samples(0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_history_serves_only_from_replicas_holding_enough_history() {
    let old = Prometheus::start_with(&[], Some(Duration::from_secs(3 * 3600))).await;
    let fresh = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[fresh.url(), old.url()]);
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--routing-strategy",
        "minimum-history:1h",
        "--affinity-options",
        "none",
    ])
    .await;

    mpp.wait_selected(&[&old.url()]).await;
    for _ in 0..20 {
        let answer = get(&mpp.url(QUERY)).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.served_by(), Some(old.url()));
    }
    let status = mpp.status().await;
    assert_eq!(status["strategy"], "minimum-history:1h");
    assert_eq!(status["candidates"][0]["has_history"], false);
    assert_eq!(status["candidates"][1]["has_history"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_history_serves_from_all_viable_when_none_is_old_enough() {
    let a = Prometheus::start().await;
    let b = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let mpp =
        Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "minimum-history:6h"]).await;
    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    let status = mpp.status().await;
    assert!(status["selection_reason"].as_str().unwrap().contains("no viable replica holds 6h"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_requests_over_every_viable_replica() {
    let a = Prometheus::start().await;
    let b = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url(), "http://127.0.0.1:1".to_string()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;

    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    let mut served = HashSet::new();
    for _ in 0..60 {
        // No cookie is sent back, so every request is routed afresh.
        let answer = get(&mpp.url(QUERY)).await.unwrap();
        assert_eq!(answer.status, 200);
        served.insert(answer.served_by().unwrap());
    }
    assert_eq!(served, HashSet::from([a.url(), b.url()]));
}

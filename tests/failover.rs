//! Killing the replica that serves traffic, under steady GET and POST load, gives clients no
//! error: failed attempts are retried on another replica and the selection follows.

mod common;

use std::time::{Duration, Instant};

use common::load::Load;
use common::{Mpp, Prometheus, endpoints_file};

async fn kill_serving_replica_under_load(strategy: &str) {
    let mut first = Prometheus::start().await;
    let second = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[first.url(), second.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", strategy]).await;
    if strategy == "single-most-data" {
        // The first replica started first, so it serves.
        mpp.wait_selected(&[&first.url()]).await;
    } else {
        mpp.wait_selected(&[&first.url(), &second.url()]).await;
    }

    let load = Load::start(&mpp, 6);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    first.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let outcomes = load.finish().await;
    let before = outcomes.iter().filter(|o| o.sent < killed_at).count();
    let after: Vec<&String> =
        outcomes.iter().filter(|o| o.sent > killed_at).map(|o| o.result.as_ref().unwrap()).collect();
    assert!(before > 20 && after.len() > 20, "too little load: {before} before, {} after", after.len());
    assert!(
        after.iter().all(|served| **served == second.url()),
        "a request after the kill was served by the dead replica"
    );
    mpp.wait_selected(&[&second.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_error_when_serving_replica_is_killed_with_random() {
    kill_serving_replica_under_load("random").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_error_when_serving_replica_is_killed_with_single_most_data() {
    kill_serving_replica_under_load("single-most-data").await;
}

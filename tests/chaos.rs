//! Chaos: replicas killed and restarted, frozen, and restarting (answering 503 while they
//! replay their WAL) under steady GET and POST load; clients see no error.

mod common;

use std::time::{Duration, Instant};

use common::load::Load;
use common::{Mpp, Prometheus, endpoints_file};

async fn three_replicas_behind_mpp(strategy: &str) -> (Vec<Prometheus>, Mpp, tempfile::TempDir) {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Prometheus::start().await);
    }
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let file = endpoints_file(dir.path(), &urls);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", strategy]).await;
    let expected: Vec<&str> = urls.iter().map(String::as_str).take(if strategy == "random" { 3 } else { 1 }).collect();
    mpp.wait_selected(&expected).await;
    (replicas, mpp, dir)
}

async fn kill_and_restart_one_at_a_time_for_30s(strategy: &str) {
    let (mut replicas, mpp, _dir) = three_replicas_behind_mpp(strategy).await;
    let load = Load::start(&mpp, 6);
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < Duration::from_secs(30) {
        // For single-most-data, kill the replica that serves; for random, each in turn.
        let selected = mpp.selected().await;
        let victim = replicas.iter().position(|r| selected.contains(&r.url())).unwrap_or(kills % 3);
        let victim = if strategy == "random" { kills % 3 } else { victim };
        replicas[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        replicas[victim].start_again().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let outcomes = load.finish().await;
    assert!(kills >= 8, "only {kills} kills in 30 s");
    assert!(outcomes.len() > 500, "too little load: {} requests", outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_error_while_replicas_are_killed_and_restarted_with_random() {
    kill_and_restart_one_at_a_time_for_30s("random").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_error_while_replicas_are_killed_and_restarted_with_single_most_data() {
    kill_and_restart_one_at_a_time_for_30s("single-most-data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_costs_no_error_and_no_request_over_3_seconds() {
    let (replicas, mpp, _dir) = three_replicas_behind_mpp("random").await;
    let frozen = replicas[1].url();
    let load = Load::start(&mpp, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[1].signal("STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Out of the selection while frozen.
    assert!(!mpp.selected().await.contains(&frozen), "a frozen replica stayed selected");
    replicas[1].signal("CONT");
    mpp.wait_selected(&[&replicas[0].url(), &frozen, &replicas[2].url()]).await;
    let outcomes = load.finish().await;
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    assert!(slowest < Duration::from_secs(3), "a request took {slowest:?}");
    assert!(outcomes.len() > 200, "too little load: {} requests", outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_503_reaches_clients_while_a_replica_restarts() {
    let (mut replicas, mpp, _dir) = three_replicas_behind_mpp("random").await;
    let load = Load::start(&mpp, 6);
    for _ in 0..6 {
        // Killed and started again at once: it listens and answers 503 while it replays.
        replicas[2].start_again().await;
        let all: Vec<String> = replicas.iter().map(|r| r.url()).collect();
        mpp.wait_selected(&[&all[0], &all[1], &all[2]]).await;
    }
    let outcomes = load.finish().await;
    assert!(replicas[2].unready_answers() > 0, "the restarts never answered 503; the test proves nothing");
    assert!(outcomes.len() > 100, "too little load: {} requests", outcomes.len());
}

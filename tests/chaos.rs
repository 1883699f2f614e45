//! Chaos: replicas killed and restarted, frozen, and restarting (answering 503 while they
//! replay their WAL) under steady GET and POST load; clients see no error.
//!
//! No bound here is a wall-clock figure of this machine: the chaos is counted in events
//! (kills, restarts), the load is shown to have run through each of them, and the one
//! latency bound is set against the same load's latency before the chaos.

mod common;

use std::time::{Duration, Instant};

use common::load::{Load, Outcome};
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

/// The requests sent from `from` to `to` (all of them answered: [`Load::finish`] fails on an
/// error).
fn sent_within(outcomes: &[Outcome], from: Instant, to: Instant) -> usize {
    outcomes.iter().filter(|o| o.sent >= from && o.sent < to).count()
}

/// The load kept running through each of `windows`: requests were sent, and answered,
/// while each lasted.
fn load_ran_through(outcomes: &[Outcome], windows: &[(Instant, Instant)], what: &str) {
    for (n, &(from, to)) in windows.iter().enumerate() {
        assert!(sent_within(outcomes, from, to) > 0, "no request was sent during {what} {n}; the test proves nothing");
    }
}

async fn kill_and_restart_one_at_a_time(strategy: &str) {
    let (mut replicas, mpp, _dir) = three_replicas_behind_mpp(strategy).await;
    let load = Load::start(&mpp, 6);
    let mut outages = Vec::new();
    for kills in 0..8 {
        // For single-most-data, kill the replica that serves; for random, each in turn.
        let selected = mpp.selected().await;
        let victim = replicas.iter().position(|r| selected.contains(&r.url())).unwrap_or(kills % 3);
        let victim = if strategy == "random" { kills % 3 } else { victim };
        replicas[victim].kill();
        let down = Instant::now();
        // The outage, and then the replica back, each under load for a while.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        replicas[victim].start_again().await;
        outages.push((down, Instant::now()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let outcomes = load.finish().await;
    load_ran_through(&outcomes, &outages, "outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_error_while_replicas_are_killed_and_restarted_with_random() {
    kill_and_restart_one_at_a_time("random").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_error_while_replicas_are_killed_and_restarted_with_single_most_data() {
    kill_and_restart_one_at_a_time("single-most-data").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_costs_no_error_and_no_request_much_over_the_liveness_check() {
    let (replicas, mpp, _dir) = three_replicas_behind_mpp("random").await;
    let frozen = replicas[1].url();
    let load = Load::start(&mpp, 6);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let freeze = Instant::now();
    replicas[1].signal("STOP");
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Out of the selection while frozen.
    assert!(!mpp.selected().await.contains(&frozen), "a frozen replica stayed selected");
    replicas[1].signal("CONT");
    let thaw = Instant::now();
    mpp.wait_selected(&[&replicas[0].url(), &frozen, &replicas[2].url()]).await;
    let outcomes = load.finish().await;
    load_ran_through(&outcomes, &[(freeze, thaw)], "the freeze");
    // A request caught on the frozen replica waits for the one-second liveness check (and
    // its timeout) to take it out, then goes to another: about 2 s more than a calm one.
    let calm = outcomes.iter().filter(|o| o.sent < freeze).map(|o| o.took).max().expect("requests before the freeze");
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap();
    assert!(
        slowest < calm + Duration::from_secs(3),
        "a request took {slowest:?}, the slowest before the freeze {calm:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_503_reaches_clients_while_a_replica_restarts() {
    let (mut replicas, mpp, _dir) = three_replicas_behind_mpp("random").await;
    let load = Load::start(&mpp, 6);
    let mut restarts = Vec::new();
    for _ in 0..6 {
        // Killed and started again at once: it listens and answers 503 while it replays.
        let from = Instant::now();
        replicas[2].start_again().await;
        let all: Vec<String> = replicas.iter().map(|r| r.url()).collect();
        mpp.wait_selected(&[&all[0], &all[1], &all[2]]).await;
        restarts.push((from, Instant::now()));
    }
    let outcomes = load.finish().await;
    assert!(replicas[2].unready_answers() > 0, "the restarts never answered 503; the test proves nothing");
    load_ran_through(&outcomes, &restarts, "restart");
}

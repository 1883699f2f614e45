//! Killing the replica that serves traffic, under steady GET and POST load, gives clients no
//! error: failed attempts are retried on another replica and the selection follows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Mpp, Prometheus, endpoints_file, get, post_form};

/// What one client saw: the moment it sent, and the replica that answered or the error.
type Outcome = (Instant, Result<String, String>);

/// Runs `clients` loops of alternating GET and form-POST queries until `stop` is set.
fn load(mpp: &Mpp, clients: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<Outcome>>> {
    (0..clients)
        .map(|client| {
            let (get_url, post_url) = (mpp.url("/api/v1/query?query=up"), mpp.url("/api/v1/query"));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer =
                        if n % 2 == 0 { get(&get_url).await } else { post_form(&post_url, "query=count(up)").await };
                    n += 1;
                    let outcome = answer.and_then(|a| {
                        let ok = a.status == 200 && a.text().contains("\"status\":\"success\"");
                        if ok {
                            Ok(a.served_by().unwrap_or_default())
                        } else {
                            Err(format!("{}: {}", a.status, a.text()))
                        }
                    });
                    outcomes.push((sent, outcome));
                }
                outcomes
            })
        })
        .collect()
}

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

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&mpp, 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    first.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.unwrap());
    }
    let errors: Vec<&Result<String, String>> = outcomes.iter().map(|(_, o)| o).filter(|o| o.is_err()).collect();
    assert!(errors.is_empty(), "{} of {} requests failed: {errors:?}", errors.len(), outcomes.len());
    let before = outcomes.iter().filter(|(t, _)| *t < killed_at).count();
    let after: Vec<&String> =
        outcomes.iter().filter(|(t, _)| *t > killed_at).map(|(_, o)| o.as_ref().unwrap()).collect();
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

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

/// A replica stand-in that passes every probe until it is asked `query=slow`; from then on its
/// `/-/ready` answers 503 (as a Prometheus too busy to answer its probes in time would look),
/// and the slow query's answer waits for the test's word.
async fn busy_replica() -> (String, tokio::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let busy = Arc::new(AtomicBool::new(false));
    let (release, released) = tokio::sync::mpsc::channel::<()>(1);
    let released = Arc::new(tokio::sync::Mutex::new(released));
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (busy, released) = (busy.clone(), released.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (busy, released) = (busy.clone(), released.clone());
                    async move {
                        let query = request.uri().query().unwrap_or("").to_string();
                        let (status, body) = match request.uri().path() {
                            "/-/ready" if busy.load(Ordering::SeqCst) => (503, "Service Unavailable"),
                            "/-/ready" => (200, "ready"),
                            "/metrics" => (200, "prometheus_tsdb_head_samples_appended_total 10\n"),
                            "/api/v1/query" if query.contains("slow") => {
                                busy.store(true, Ordering::SeqCst);
                                released.lock().await.recv().await;
                                (200, r#"{"status":"success","data":{"resultType":"scalar","result":[1,"42"]}}"#)
                            }
                            _ => (200, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#),
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, release, server)
}

/// A query waiting on the only replica there is gets its answer even when the replica is
/// found down meanwhile: moving on would only turn a slow answer into a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_on_the_only_replica_waits_for_its_answer_when_the_replica_is_found_down() {
    let (replica, release, _server) = busy_replica().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), std::slice::from_ref(&replica));
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--liveness-interval", "200ms"]).await;
    mpp.wait_selected(&[&replica]).await;
    let url = mpp.url("/api/v1/query?query=slow");
    let slow = tokio::spawn(async move { common::get(&url).await });
    common::wait_until("the replica found not ready", Duration::from_secs(20), || async {
        mpp.candidates_where("ready").await.is_empty()
    })
    .await;
    release.send(()).await.unwrap();
    let answer = slow.await.unwrap().expect("an answer");
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("42"), "{}", answer.text());
}

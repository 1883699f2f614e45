//! The admin paths: health, metrics (read by a real Prometheus scraping mpp), the status
//! page as HTML and JSON, and the JSON errors clients get when mpp cannot forward.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Mpp, Prometheus, endpoints_file, get, post_form, send, wait_until};
use http::Request;
use mpp::fuzzing::exposition;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_status_describe_the_proxy() {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[replica.url(), "http://127.0.0.1:1".into()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_selected(&[&replica.url()]).await;

    let health = get(&mpp.url("/mpp/health")).await.unwrap();
    assert_eq!((health.status.as_u16(), health.text().as_str()), (200, "OK"));
    for _ in 0..5 {
        assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
    }

    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap();
    assert!(metrics.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let samples = exposition::parse(&metrics.text()).expect("metrics parse");
    let value = |name: &str| exposition::sum(&samples, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(value("mpp_requests_total"), 5.0);
    assert_eq!(value("mpp_request_duration_seconds_count"), 5.0);
    assert_eq!(value("mpp_selected_backends"), 1.0);
    assert_eq!(value("mpp_candidates"), 2.0);
    assert_eq!(value("mpp_build_info"), 1.0);
    // The process metrics every Prometheus client library exports (here the test process's,
    // since mpp runs in it).
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 0.0 && value("process_max_fds") >= value("process_open_fds"));
    assert!((started - 3600.0..=started).contains(&value("process_start_time_seconds")));
    assert!(value("mpp_selection_rounds_total") >= 1.0);
    assert!(value("mpp_probe_failures_total") >= 1.0);
    // Every registered replica has its series from the start; the queries went to the one up.
    let served = |backend: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "mpp_requests_total"
                    && s.labels.contains(&("backend".into(), backend.into()))
                    && s.labels.contains(&("code".into(), "200".into()))
            })
            .unwrap_or_else(|| panic!("no mpp_requests_total series for {backend}"))
            .value
    };
    assert_eq!(served(&replica.url()), 5.0);
    assert_eq!(served("http://127.0.0.1:1"), 0.0);

    let status = mpp.status().await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["strategy"], "random");
    assert_eq!(status["affinity_options"], "cookies");
    assert_eq!(status["selection_interval"], "10s");
    let down = &status["candidates"][1];
    assert_eq!((down["selected"].as_bool(), down["viable"].as_bool()), (Some(false), Some(false)));
    assert!(down["last_probe_error"].as_str().unwrap().contains("Connection refused"), "{down}");
    assert!(status["candidates"][0]["uptime_seconds"].is_u64());

    let html = send(Request::get(mpp.url("/mpp/status")).header("accept", "text/html"), Bytes::new()).await.unwrap();
    assert!(html.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = html.text();
    for expected in [replica.url().as_str(), "http://127.0.0.1:1", "random", "Connection refused", "Uptime"] {
        assert!(page.contains(expected), "the status page lacks {expected}");
    }
    assert!(!page.contains("http://") || !page.contains("<script"), "the page must be self-contained");
    assert!(!page.contains("<link"), "the page must load no outside assets");

    assert_eq!(get(&mpp.url("/mpp/nothing")).await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_mpp_metrics() {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[replica.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap()]).await;
    mpp.wait_selected(&[&replica.url()]).await;
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);

    let scraper = Prometheus::start_with(&[mpp.addr.to_string()], None).await;
    let query = format!("{}/api/v1/query?query=mpp_requests_total", scraper.url());
    wait_until("Prometheus to scrape mpp_requests_total from /mpp/metrics", Duration::from_secs(20), || async {
        get(&query).await.is_ok_and(|a| a.text().contains("\"job\":\"mpp\"") && a.text().contains("\"code\":\"200\""))
    })
    .await;
    let targets = get(&format!("{}/api/v1/targets", scraper.url())).await.unwrap().text();
    let mpp_target = targets.split("\"scrapePool\":\"mpp\"").nth(1).expect("the mpp scrape target");
    assert!(mpp_target.contains("\"health\":\"up\""), "{targets}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_viable_replica_clients_get_a_json_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap()]).await;
    let started = std::time::Instant::now();
    let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["status"], "error");
    assert_eq!(body["errorType"], "unavailable");
    assert!(body["error"].as_str().unwrap().contains("no candidate is viable"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_get_413_and_smaller_ones_pass() {
    let replica = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[replica.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--max-request-body", "1KiB"]).await;
    mpp.wait_selected(&[&replica.url()]).await;

    let small = post_form(&mpp.url("/api/v1/query"), "query=up").await.unwrap();
    assert_eq!(small.status, 200, "{}", small.text());
    let padding = "x".repeat(2000);
    let large = post_form(&mpp.url("/api/v1/query"), &format!("query=up&pad={padding}")).await.unwrap();
    assert_eq!(large.status, 413);
    assert!(large.text().contains("--max-request-body"), "{}", large.text());
}

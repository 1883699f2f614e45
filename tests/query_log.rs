//! The query log through a running mpp, beside a real Prometheus writing its own: one line
//! per API query, in Prometheus's shape, naming the replica that answered.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Mpp, Prometheus, endpoints_file, get, ready, wait_until};
use serde_json::Value;

/// The JSON lines of a log file.
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_query_is_one_line_in_prometheus_shape_naming_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replica_log = dir.path().join("replica-queries.log");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s, query_log_file: '{}'}}\n\
         scrape_configs:\n  - job_name: prometheus\n    static_configs: [{{targets: ['127.0.0.1:{{port}}']}}]\n",
        replica_log.display()
    );
    let replica = Prometheus::start_custom(&config, &[], ready).await;
    let file = endpoints_file(dir.path(), &[replica.url()]);
    let log = dir.path().join("queries.log");
    // mpp asks its clients for basic auth: the user it admits is logged.
    let web = dir.path().join("web.yml");
    std::fs::write(&web, format!("basic_auth_users:\n  grafana: {}\n", bcrypt::hash("x", 4).unwrap())).unwrap();
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--query-log-file",
        log.to_str().unwrap(),
        "--web.config.file",
        web.to_str().unwrap(),
    ])
    .await;
    // As "grafana:x".
    let send = |request: http::request::Builder, body: &'static str| {
        common::send(request.header("authorization", "Basic Z3JhZmFuYTp4"), body.into())
    };
    let instant = send(http::Request::get(mpp.url("/api/v1/query?query=up&time=1700000000")), "").await.unwrap();
    assert_eq!(instant.status, 200);
    let form =
        http::Request::post(mpp.url("/api/v1/query_range")).header("content-type", "application/x-www-form-urlencoded");
    let range = send(form, "query=sum(up)&start=1700000000&end=1700000600&step=15s").await.unwrap();
    assert_eq!(range.status, 200);
    let series = send(http::Request::get(mpp.url("/api/v1/series?match[]=up&match[]=prometheus_build_info")), "");
    assert_eq!(series.await.unwrap().status, 200);
    // Not API reads, or not admitted: not in the log.
    assert_eq!(send(http::Request::get(mpp.url("/metrics")), "").await.unwrap().status, 200);
    assert_eq!(send(http::Request::get(mpp.url("/mpp/status")), "").await.unwrap().status, 200);
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 401);

    wait_until("three lines in mpp's query log", Duration::from_secs(10), || async { lines(&log).len() >= 3 }).await;
    let ours = lines(&log);
    assert_eq!(ours.len(), 3, "{ours:#?}");
    for line in &ours {
        assert_eq!(line["mpp"]["replicas"], serde_json::json!([replica.url()]), "{line}");
        assert_eq!((line["mpp"]["answered"].as_str(), line["mpp"]["status"].as_u64()), (Some("one"), Some(200)));
        assert_eq!(line["httpRequest"]["clientIP"], "127.0.0.1");
        assert_eq!(line["mpp"]["attempts"], 1, "{line}");
        assert!(line["stats"]["timings"]["execTotalTime"].as_f64().is_some_and(|t| t > 0.0), "{line}");
    }
    assert_eq!(ours[0]["params"]["start"], "2023-11-14T22:13:20.000Z");
    assert_eq!(ours[1]["httpRequest"]["method"], "POST");
    assert_eq!(ours[1]["params"]["step"], 15);
    assert_eq!(ours[2]["params"]["match[]"], serde_json::json!(["up", "prometheus_build_info"]));
    for line in &ours {
        assert_eq!(line["httpRequest"]["user"], "grafana", "{line}");
    }

    // The replica logged the same two PromQL queries (among mpp's own probes): the same
    // keys, the same parameters.
    let same = |ours: &Value, theirs: &Value| {
        ours["params"]["query"] == theirs["params"]["query"]
            && ours["httpRequest"]["path"] == theirs["httpRequest"]["path"]
    };
    wait_until("the replica's log of both queries", Duration::from_secs(10), || async {
        let theirs = lines(&replica_log);
        ours[..2].iter().all(|o| theirs.iter().any(|t| same(o, t)))
    })
    .await;
    let theirs = lines(&replica_log);
    for ours in &ours[..2] {
        let theirs = theirs.iter().find(|t| same(ours, t)).unwrap();
        for key in theirs.as_object().unwrap().keys().filter(|k| *k != "spanID") {
            assert!(ours.get(key).is_some(), "mpp's line lacks {key}: {ours}\nPrometheus's: {theirs}");
        }
        assert_eq!(ours["params"], theirs["params"], "the same parameters as Prometheus writes them");
        for timing in ours["stats"]["timings"].as_object().unwrap().keys() {
            assert!(theirs["stats"]["timings"].get(timing).is_some(), "{timing} is not Prometheus's: {theirs}");
        }
    }
}

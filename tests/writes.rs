//! Requests that change what a replica holds reach every replica, or none: Prometheus's TSDB
//! admin API and lifecycle paths (refused unless `--admin-api all`), and remote write, with
//! real replicas and a real Prometheus writing through mpp.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Mpp, Prometheus, endpoints_file, get, send, wait_until};
use http::{Request, StatusCode};

fn json(answer: &common::Answer) -> serde_json::Value {
    serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.text()))
}

async fn post(url: &str) -> common::Answer {
    send(Request::post(url), Bytes::new()).await.unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// The series `query` finds at `time` (seconds), asked of one replica directly.
async fn series_at(replica: &Prometheus, query: &str, time: f64) -> usize {
    let url = format!("{}/api/v1/query?query={}&time={time:.3}", replica.url(), urlencode(query));
    let answer = get(&url).await.expect("query a replica");
    json(&answer)["data"]["result"].as_array().map_or(0, Vec::len)
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `mpp_broadcast_requests_total{kind,outcome}` from mpp's own metrics.
async fn broadcasts(mpp: &Mpp, kind: &str, outcome: &str) -> f64 {
    let text = get(&mpp.url("/mpp/metrics")).await.expect("mpp metrics").text();
    let series = format!("mpp_broadcast_requests_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A target both replicas scrape, and the replicas (each started with `flags`), once both
/// hold its `up`.
async fn replicas(flags: [&[&str]; 2]) -> (Prometheus, Prometheus, Prometheus) {
    let target = Prometheus::start().await;
    let host = target.url().trim_start_matches("http://").to_string();
    let a = Prometheus::start_replica(std::slice::from_ref(&host), flags[0]).await;
    let b = Prometheus::start_replica(std::slice::from_ref(&host), flags[1]).await;
    for replica in [&a, &b] {
        wait_until("the replicas scrape the target", Duration::from_secs(30), || async {
            series_at(replica, "up{job=\"node\"}", now()).await > 0
        })
        .await;
    }
    (target, a, b)
}

/// Two replicas (each started with its `flags`) of one target, and mpp in front of them
/// (started with `args` besides the endpoints file), once both are viable.
struct Setup {
    _target: Prometheus,
    a: Prometheus,
    b: Prometheus,
    mpp: Mpp,
    _dir: tempfile::TempDir,
}

async fn behind_mpp(flags: [&[&str]; 2], args: &[&str]) -> Setup {
    let (_target, a, b) = replicas(flags).await;
    let _dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(_dir.path(), &[a.url(), b.url()]);
    let mut all = vec!["--endpoints-file", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let mpp = Mpp::start(&all).await;
    wait_viable(&mpp, 2).await;
    Setup { _target, a, b, mpp, _dir }
}

/// Waits until `count` replicas are viable (whether selected or not: a write or an admin
/// request goes to every viable replica, whatever the strategy selects).
async fn wait_viable(mpp: &Mpp, count: usize) {
    wait_until("both replicas viable", Duration::from_secs(20), || async {
        mpp.candidates_where("viable").await.len() == count
    })
    .await;
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_lifecycle_requests_are_refused_by_default_and_reach_no_replica() {
    let admin: &[&str] = &["--web.enable-admin-api", "--web.enable-lifecycle"];
    let Setup { a, b, mpp, _target, _dir } = behind_mpp([admin, admin], &[]).await;

    let before = now();
    let paths = [
        "/api/v1/admin/tsdb/delete_series?match[]=up",
        "/api/v1/admin/tsdb/snapshot",
        "/api/v1/admin/tsdb/clean_tombstones",
        "/-/reload",
        "/-/quit",
        // As Prometheus's router reads them, these are admin paths too.
        "/api/v1/admin%2Ftsdb/delete_series?match[]=up",
        "/-/./reload",
    ];
    for path in paths {
        let answer = post(&mpp.url(path)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}: {}", answer.text());
        let body = json(&answer);
        assert_eq!(body["status"], "error", "{path}");
        assert_eq!(body["errorType"], "forbidden", "{path}");
        assert!(
            body["error"].as_str().unwrap().contains("--admin-api all"),
            "{path}: the error names the flag: {body}"
        );
    }
    // Nothing reached a replica: both still run, and both still hold the series.
    for replica in [&a, &b] {
        assert_eq!(get(&format!("{}/-/ready", replica.url())).await.unwrap().status, StatusCode::OK);
        assert!(series_at(replica, "up", before).await > 0, "{} still holds `up`", replica.url());
    }
    assert_eq!(broadcasts(&mpp, "admin", "refused").await, paths.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_api_all_a_delete_reaches_every_replica_and_a_snapshot_names_each() {
    let admin: &[&str] = &["--web.enable-admin-api", "--web.enable-lifecycle"];
    let Setup { a, b, mpp, _target, _dir } = behind_mpp([admin, admin], &["--admin-api", "all"]).await;

    // Everything up to `end` is deleted (the replicas go on scraping after it).
    let end = now();
    for replica in [&a, &b] {
        assert!(series_at(replica, "up{job=\"node\"}", end).await > 0);
    }
    let delete = format!("/api/v1/admin/tsdb/delete_series?match[]={}&end={end:.3}", urlencode("up{job=\"node\"}"));
    let answer = post(&mpp.url(&delete)).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text());
    let sent_to = answer.headers.get("mpp-sent-to").expect("MPP-Sent-To").to_str().unwrap().to_string();
    assert!(sent_to.contains(&a.url()) && sent_to.contains(&b.url()), "sent to both: {sent_to}");
    for replica in [&a, &b] {
        assert_eq!(series_at(replica, "up{job=\"node\"}", end).await, 0, "{} deleted the series", replica.url());
    }

    // A snapshot: each replica makes its own, and the answer names each.
    let answer = post(&mpp.url("/api/v1/admin/tsdb/snapshot")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = json(&answer);
    assert_eq!(body["status"], "success");
    let named = body["data"]["replicas"].as_array().expect("data.replicas");
    let mut urls: Vec<&str> = named.iter().map(|r| r["replica"].as_str().unwrap()).collect();
    urls.sort();
    let mut want = [a.url(), b.url()];
    want.sort();
    assert_eq!(urls, want);
    assert!(named.iter().all(|r| !r["name"].as_str().unwrap().is_empty()));
    assert_eq!(body["data"]["name"], named[0]["name"], "data.name stays Prometheus's field");

    // A reload reaches both (each answers 200).
    let answer = post(&mpp.url("/-/reload")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(broadcasts(&mpp, "admin", "ok").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_request_one_replica_refuses_is_an_error_naming_each_replica() {
    let Setup { a, b, mpp, _target, _dir } =
        behind_mpp([&["--web.enable-admin-api"], &[]], &["--admin-api", "all"]).await;

    // B has its admin API off (Prometheus refuses, "admin APIs disabled"): the client hears
    // that the replicas now differ, and from which.
    let refused = post(&format!("{}/api/v1/admin/tsdb/clean_tombstones", b.url())).await.status;
    assert!(refused.is_server_error(), "B refuses with {refused}");
    let answer = post(&mpp.url("/api/v1/admin/tsdb/clean_tombstones")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.text());
    let error = json(&answer)["error"].as_str().unwrap().to_string();
    assert!(error.contains(&format!("{} answered 204", a.url())), "{error}");
    assert!(error.contains(&format!("{} answered {}", b.url(), refused.as_u16())), "{error}");
    assert_eq!(broadcasts(&mpp, "admin", "failed").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_through_mpp_reaches_every_replica_and_a_killed_one_is_skipped() {
    let receiver: &[&str] = &["--web.enable-remote-write-receiver"];
    let Setup { a, mut b, mpp, _target, _dir } =
        behind_mpp([receiver, receiver], &["--selection-interval", "1s"]).await;

    let writer = Prometheus::start_remote(common::Remote::Write, &mpp.url("/api/v1/write")).await;
    let written = format!("up{{job=\"prometheus\",instance=\"{}\"}}", writer.url().trim_start_matches("http://"));
    for replica in [&a, &b] {
        wait_until("the written series on each replica", Duration::from_secs(30), || async {
            series_at(replica, &written, now()).await == 1
        })
        .await;
    }
    assert!(broadcasts(&mpp, "write", "ok").await > 0.0);

    // B is killed while the writer goes on: the writes that find it dead fail (the writer
    // resends them), then B is out of the selection and A alone takes them.
    b.kill();
    let killed_at = now();
    let ok = broadcasts(&mpp, "write", "ok").await;
    wait_until("writes succeed again with B gone, for a few seconds", Duration::from_secs(30), || async {
        broadcasts(&mpp, "write", "ok").await >= ok + 5.0
    })
    .await;
    b.start_again().await;
    wait_viable(&mpp, 2).await;
    let fresh = format!("count_over_time({written}[3s])");
    wait_until("B holds samples written after its restart", Duration::from_secs(30), || async {
        series_at(&b, &fresh, now()).await == 1
    })
    .await;
    let back_at = now();

    // A holds every scrape the writer made while B was down: one sample a second, none lost.
    let span = (back_at - killed_at).floor();
    let query = format!("count_over_time({written}[{span}s])");
    let url = format!("{}/api/v1/query?query={}&time={back_at:.3}", a.url(), urlencode(&query));
    let count: f64 =
        json(&get(&url).await.unwrap())["data"]["result"][0]["value"][1].as_str().expect("a count").parse().unwrap();
    assert!(count >= span - 2.0, "A holds {count} samples over {span} s of B's outage: the writer's resends arrived");
    // B's gap is its own: mpp's coverage map shows it.
    wait_until("B's hole, closed, on /mpp/status", Duration::from_secs(60), || async {
        let status = mpp.status().await;
        status["candidates"].as_array().unwrap().iter().any(|c| {
            c["url"] == b.url().as_str()
                && c["coverage"]["holes"]
                    .as_array()
                    .is_some_and(|h| !h.is_empty() && h.iter().all(|h| h["open"] == false))
        })
    })
    .await;

    // OTLP goes to every replica too; Prometheus 2.42 has no OTLP receiver, and its refusal
    // (404) is passed on as it is.
    let otlp = send(
        Request::post(mpp.url("/api/v1/otlp/v1/metrics")).header("content-type", "application/x-protobuf"),
        Bytes::from_static(b"\x0a\x00"),
    )
    .await
    .unwrap();
    assert_eq!(otlp.status, StatusCode::NOT_FOUND, "{}", otlp.text());
    let sent_to = otlp.headers.get("mpp-sent-to").expect("MPP-Sent-To").to_str().unwrap().to_string();
    assert!(sent_to.contains(&a.url()) && sent_to.contains(&b.url()), "{sent_to}: {}", mpp.status().await);
}

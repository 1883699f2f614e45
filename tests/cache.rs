//! The dashboard cache through a running mpp, against a real Prometheus: a set of dashboard
//! queries asked again and again while their range slides forward, each answer compared with
//! the same query asked directly of the replica at the same moment, byte for byte.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Answer, Mpp, Prometheus, endpoints_file, get, ready, send, wait_until};

/// The fresh window the tests keep; steps are kept up to what the replicas had ingested at
/// their last selection round too, so the tests run rounds every second.
const FRESH: &str = "3s";

/// Dashboard queries: rates, aggregations, a histogram quantile, `offset`, a subquery, and
/// `@` at a fixed time (long before the data: an empty answer, kept like any other).
const QUERIES: &[&str] = &[
    "prometheus_tsdb_head_samples_appended_total",
    "rate(prometheus_http_requests_total[5s])",
    "sum by (handler) (rate(prometheus_http_requests_total[5s]))",
    "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[10s])))",
    "up offset 3s",
    "max_over_time(rate(prometheus_tsdb_head_samples_appended_total[4s])[10s:2s])",
    "prometheus_tsdb_head_series @ 1700000000",
];

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn range(query: &str, start: f64, end: f64, step: &str) -> String {
    format!("/api/v1/query_range?query={}&start={start}&end={end}&step={step}", encode(query))
}

fn cache_result(answer: &Answer) -> Option<String> {
    answer.headers.get("mpp-cache").map(|v| v.to_str().unwrap().to_string())
}

/// A replica scraping itself every second, with the admin API on (for deletes).
async fn replica() -> Prometheus {
    let config = "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
                  scrape_configs:\n  - job_name: prometheus\n    static_configs: [{targets: ['127.0.0.1:{port}']}]\n";
    Prometheus::start_custom(config, &["--web.enable-admin-api".to_string()], ready).await
}

/// mpp in front of the replicas of endpoints `file`, keeping steps older than [`FRESH`], with
/// `more` flags.
async fn with_cache(file: &std::path::Path, more: &[&str]) -> Mpp {
    let file = file.to_str().unwrap();
    let args = ["--endpoints-file", file, "--cache-fresh-window", FRESH, "--selection-interval", "1s"];
    Mpp::start(&[&args[..], more].concat()).await
}

/// The counter of `mpp_cache_requests_total` for `result`.
async fn counted(mpp: &Mpp, result: &str) -> f64 {
    let text = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    let prefix = format!("mpp_cache_requests_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_dashboard_gets_the_replicas_answers_byte_for_byte_from_the_cache() {
    let prometheus = replica().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[prometheus.url()]);
    let mpp = with_cache(&file, &[]).await;
    let began = now().floor();
    wait_until("20 s of data", Duration::from_secs(40), || async { now() > began + 22.0 }).await;

    // Every refresh: the last 15 s, ending 5 s ago (outside the fresh window), one second on.
    let mut results = Vec::new();
    for refresh in 0..4 {
        let end = (now() - 5.0).floor();
        let start = end - 15.0;
        for query in QUERIES {
            let path = range(query, start, end, "1s");
            let (ours, theirs) = (mpp.url(&path), format!("{}{path}", prometheus.url()));
            let (through, direct) = tokio::join!(get(&ours), get(&theirs));
            let (through, direct) = (through.unwrap(), direct.unwrap());
            assert_eq!(through.status, 200, "{query}: {}", through.text());
            assert_eq!(through.text(), direct.text(), "refresh {refresh}, {query} from {start} to {end}");
            results.push(cache_result(&through).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert!(results[..QUERIES.len()].iter().all(|r| r == "miss"), "{results:?}");
    assert!(results[QUERIES.len()..].iter().all(|r| r == "partial" || r == "hit"), "{results:?}");

    // The same range again: every step from the cache.
    let end = (now() - 5.0).floor();
    let path = range(QUERIES[1], end - 15.0, end, "1s");
    let first = get(&mpp.url(&path)).await.unwrap();
    let again = get(&mpp.url(&path)).await.unwrap();
    assert_eq!(cache_result(&again).as_deref(), Some("hit"));
    assert_eq!(again.text(), first.text());
    assert_eq!(again.text(), get(&format!("{}{path}", prometheus.url())).await.unwrap().text());

    // The steps, by where they came from: the hit's all from the cache, and every step the
    // replicas answered counted as theirs.
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    let steps = |source: &str| -> f64 {
        let prefix = format!("mpp_cache_steps_total{{source=\"{source}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
    };
    assert!(steps("cache") >= 16.0, "{metrics}");
    assert!(steps("replica") >= (QUERIES.len() * 16) as f64, "every first answer's 16 steps at least: {metrics}");

    // Prometheus's error about a query is passed on, and not kept: asked again, a miss again.
    let failing = range(
        r#"label_replace({__name__=~"up|scrape_duration_seconds"}, "__name__", "same", "", "")"#,
        end - 15.0,
        end,
        "1s",
    );
    for _ in 0..2 {
        let answer = get(&mpp.url(&failing)).await.unwrap();
        assert_eq!(answer.status, 422, "{}", answer.text());
        assert!(answer.text().contains(r#""errorType":"execution""#), "{}", answer.text());
        assert_eq!(cache_result(&answer).as_deref(), Some("miss"));
    }

    // A form POST of the same query shares the entry.
    let form = format!("query={}&start={}&end={end}&step=1", encode(QUERIES[1]), end - 15.0);
    let post = common::post_form(&mpp.url("/api/v1/query_range"), &form).await.unwrap();
    assert_eq!(cache_result(&post).as_deref(), Some("hit"));
    assert_eq!(post.text(), first.text());

    // `Cache-Control: no-cache` asks the replicas, and refreshes the entry.
    let fresh =
        send(http::Request::get(mpp.url(&path)).header("cache-control", "no-cache"), Bytes::new()).await.unwrap();
    assert_eq!(cache_result(&fresh).as_deref(), Some("miss"));
    assert_eq!(fresh.text(), first.text());

    // An instant query at a past time: kept whole.
    let instant = format!("/api/v1/query?query={}&time={}", encode(QUERIES[2]), end - 3.0);
    let miss = get(&mpp.url(&instant)).await.unwrap();
    let hit = get(&mpp.url(&instant)).await.unwrap();
    assert_eq!((cache_result(&miss).as_deref(), cache_result(&hit).as_deref()), (Some("miss"), Some("hit")));
    assert_eq!(hit.text(), get(&format!("{}{instant}", prometheus.url())).await.unwrap().text());
    // Now: never kept.
    let now_instant = format!("/api/v1/query?query={}", encode(QUERIES[2]));
    assert_eq!(cache_result(&get(&mpp.url(&now_instant)).await.unwrap()), None);

    // The metrics and the status page tell of it.
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    let gauge = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).map_or(0.0, |v| v.parse().unwrap())
    };
    assert!(gauge("mpp_cache_entries") >= QUERIES.len() as f64, "{metrics}");
    assert!(gauge("mpp_cache_bytes") > 0.0, "{metrics}");
    let status = mpp.status().await;
    assert!(status["cache"]["entries"].as_u64().unwrap() >= QUERIES.len() as u64, "{status}");
    assert!(status["cache"]["bytes"].as_u64().unwrap() > 0);
    let page = get(&mpp.url("/mpp/status")).await.unwrap().text();
    assert!(page.contains("Cache") && page.contains("prometheus_http_requests_total"), "{page}");

    // A delete through mpp empties the cache.
    let mpp = {
        drop(mpp);
        with_cache(&file, &["--admin-api", "all"]).await
    };
    mpp.wait_selected(&[&prometheus.url()]).await;
    assert_eq!(cache_result(&get(&mpp.url(&path)).await.unwrap()).as_deref(), Some("miss"));
    assert_eq!(cache_result(&get(&mpp.url(&path)).await.unwrap()).as_deref(), Some("hit"));
    let delete = format!("/api/v1/admin/tsdb/delete_series?match[]={}", encode("{__name__=\"nothing_here\"}"));
    let deleted = send(http::Request::post(mpp.url(&delete)), Bytes::new()).await.unwrap();
    assert!(deleted.status.is_success(), "{}", deleted.text());
    assert_eq!(cache_result(&get(&mpp.url(&path)).await.unwrap()).as_deref(), Some("miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ranges_get_prometheus_answers_and_nothing_is_kept() {
    let prometheus = replica().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[prometheus.url()]);
    let mpp = with_cache(&file, &[]).await;
    mpp.wait_selected(&[&prometheus.url()]).await;
    let end = (now() - 60.0).floor();
    for path in [
        range("up", end - 60.0, end, "0"),
        range("up", end - 60.0, end, "1ns"),
        range("up", end - 100.0 * 365.0 * 86400.0, end, "1s"),
        range("up", end, end - 60.0, "1s"),
        range("up", end - 60.0, end, "-1s"),
        format!("/api/v1/query_range?query=up&start=yesterday&end={end}&step=1"),
        range("sum(", end - 60.0, end, "1s"),
    ] {
        for _ in 0..2 {
            let (ours, theirs) = (mpp.url(&path), format!("{}{path}", prometheus.url()));
            let (through, direct) = tokio::join!(get(&ours), get(&theirs));
            let (through, direct) = (through.unwrap(), direct.unwrap());
            assert_eq!((through.status, through.text()), (direct.status, direct.text()), "{path}");
            assert_ne!(cache_result(&through).as_deref(), Some("hit"), "{path}");
        }
    }
    // A GET with a form body: Prometheus reads only its URL, and so would a key made of the
    // body; such a request is not kept (nor served from the cache).
    let path = range("up", end - 60.0, end, "1s");
    for _ in 0..2 {
        let smuggled = http::Request::get(mpp.url(&path)).header("content-type", "application/x-www-form-urlencoded");
        let through = send(smuggled, Bytes::from_static(b"query=prometheus_build_info")).await.unwrap();
        let direct = get(&format!("{}{path}", prometheus.url())).await.unwrap();
        assert_eq!(through.text(), direct.text());
        assert_eq!(cache_result(&through), None);
    }
    assert_eq!(counted(&mpp, "hit").await, 0.0);
    let status = mpp.status().await;
    assert_eq!(status["cache"]["entries"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_answers_say_nothing_of_it() {
    let prometheus = replica().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[prometheus.url()]);
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--cache-max-bytes", "0"]).await;
    mpp.wait_selected(&[&prometheus.url()]).await;
    let end = (now() - 60.0).floor();
    let path = range("up", end - 60.0, end, "1s");
    for _ in 0..2 {
        assert_eq!(cache_result(&get(&mpp.url(&path)).await.unwrap()), None);
    }
    assert!(mpp.status().await["cache"].is_null());
}

/// Refreshes `query` over the 20 s ending 5 s ago through mpp (as the client pinned to
/// `replica` by `cookie`) and directly of `replica`, `times` times a second apart, and checks
/// the answers are the same byte for byte; the MPP-Cache results.
async fn refresh_and_compare(mpp: &Mpp, replica: &Prometheus, cookie: &str, query: &str, times: usize) -> Vec<String> {
    let mut results = Vec::new();
    for refresh in 0..times {
        let end = (now() - 5.0).floor();
        let path = range(query, end - 20.0, end, "1s");
        let pinned = http::Request::get(mpp.url(&path)).header("cookie", format!("MPP.Route={cookie}"));
        let theirs = format!("{}{path}", replica.url());
        let (through, direct) = tokio::join!(send(pinned, Bytes::new()), get(&theirs));
        let (through, direct) = (through.unwrap(), direct.unwrap());
        assert_eq!(through.status, 200, "{}", through.text());
        assert_eq!(through.text(), direct.text(), "refresh {refresh} of {query} ending {end}");
        results.push(cache_result(&through).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_restart_and_the_hole_it_leaves_change_no_answer() {
    // Two replicas scraping a target (as the coverage tests run them): one's restart is a hole
    // in the target's series that mpp finds by comparing them.
    let target = Prometheus::start().await;
    let host = target.url().trim_start_matches("http://").to_string();
    let flags = ["--query.lookback-delta=2s"];
    let (a, b) = tokio::join!(
        Prometheus::start_replica(std::slice::from_ref(&host), &flags),
        Prometheus::start_replica(std::slice::from_ref(&host), &flags)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let args = [
        "--endpoints-file",
        file.to_str().unwrap(),
        "--cache-fresh-window",
        FRESH,
        "--selection-interval",
        "1s",
        "--routing-strategy",
        "random",
    ];
    let mpp = Mpp::start(&args).await;
    let began = now();
    wait_until("25 s of data", Duration::from_secs(40), || async { now() > began + 25.0 }).await;
    // The client is pinned to one replica: its answers are that replica's, step for step.
    let first = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
    let (cookie, served) = (first.route_cookie().expect("a route cookie"), first.served_by().unwrap());
    let (pinned, mut other) = if served == a.url() { (a, b) } else { (b, a) };
    let query = "rate(prometheus_tsdb_head_samples_appended_total{job=\"node\"}[5s])";
    let before = refresh_and_compare(&mpp, &pinned, &cookie, query, 3).await;
    assert!(before[1..].iter().all(|r| r == "partial" || r == "hit"), "{before:?}");

    // The other replica restarts: a few seconds without scrapes, a hole mpp finds.
    other.stop();
    tokio::time::sleep(Duration::from_secs(6)).await;
    other.start_after_stop().await;
    refresh_and_compare(&mpp, &pinned, &cookie, query, 2).await;
    wait_until("the restarted replica's hole on /mpp/status", Duration::from_secs(30), || async {
        let status = mpp.status().await;
        status["candidates"].as_array().unwrap().iter().any(|c| {
            c["url"] == other.url().as_str()
                && c["coverage"]["holes"]
                    .as_array()
                    .is_some_and(|h| !h.is_empty() && h.iter().all(|h| h["open"] == false))
        })
    })
    .await;
    let after = refresh_and_compare(&mpp, &pinned, &cookie, query, 6).await;
    assert!(after.iter().all(|r| r == "partial" || r == "hit"), "{after:?}");
}

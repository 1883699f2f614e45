//! Gap-free answers with real replicas: two Prometheus servers scrape the same target every
//! second with a 2 s lookback, so that a replica's restart leaves a hole its queries show.
//! Replica A is down for a while, later replica B is; queries through mpp have neither hole,
//! before and after mpp itself is restarted.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Answer, Mpp, Prometheus, Remote, endpoints_file, get, post_form, wait_until};
use serde_json::Value;

const DOWN_FOR: Duration = Duration::from_secs(6);
/// The replicas' scrape interval, milliseconds.
const SCRAPE_MS: i64 = 1000;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn body(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.text()))
}

/// The steps (Unix milliseconds) at which each series of a matrix answer has a value.
fn steps(answer: &Answer) -> Vec<(String, BTreeSet<i64>)> {
    let value = body(answer);
    assert_eq!(value["status"], "success", "{}", answer.text());
    value["data"]["result"]
        .as_array()
        .expect("a matrix")
        .iter()
        .map(|series| {
            let name = series["metric"].to_string();
            let steps = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|point| (point[0].as_f64().unwrap() * 1000.0).round() as i64)
                .collect();
            (name, steps)
        })
        .collect()
}

/// Every step of a range from `start` to `end`, 1 s apart.
fn all_steps(start: f64, end: f64) -> BTreeSet<i64> {
    let (start, end) = ((start * 1000.0) as i64, (end * 1000.0) as i64);
    (0..).map(|k| start + k * 1000).take_while(|&t| t <= end).collect()
}

fn range_path(start: f64, end: f64) -> String {
    format!("/api/v1/query_range?query=up%7Bjob%3D%22node%22%7D&start={start:.3}&end={end:.3}&step=1")
}

fn sliced(answer: &Answer) -> bool {
    answer.headers.contains_key("mpp-slices")
}

/// The slices an answer says it was joined from: (replica, first step, last step), Unix
/// milliseconds.
fn slices_of(answer: &Answer) -> Vec<(String, i64, i64)> {
    let header = answer.headers.get("mpp-slices").expect("an MPP-Slices header").to_str().unwrap();
    header
        .split(", ")
        .map(|slice| {
            let (url, range) = slice.split_once(' ').unwrap_or_else(|| panic!("a slice: {slice}"));
            let (from, to) = range.split_once('-').unwrap_or_else(|| panic!("a range: {range}"));
            let millis = |t: &str| (t.parse::<f64>().unwrap() * 1000.0).round() as i64;
            (url.to_string(), millis(from), millis(to))
        })
        .collect()
}

/// The points (Unix milliseconds, value as written) of a one-series matrix answer.
fn points(answer: &Answer) -> Vec<(i64, String)> {
    let value = body(answer);
    let result = value["data"]["result"].as_array().expect("a matrix").clone();
    assert!(result.len() <= 1, "one series: {}", answer.text());
    result
        .iter()
        .flat_map(|series| series["values"].as_array().unwrap().clone())
        .map(|point| ((point[0].as_f64().unwrap() * 1000.0).round() as i64, point[1].as_str().unwrap().to_string()))
        .collect()
}

/// Times of the two outages, Unix seconds.
struct Outages {
    start: f64,
    a: (f64, f64),
    b: (f64, f64),
    end: f64,
}

/// The steps at which the replica at `base` has the one series of `path`.
async fn direct_steps(base: &str, path: &str) -> BTreeSet<i64> {
    let answer = get(&format!("{base}{path}")).await.unwrap();
    let series = steps(&answer);
    assert_eq!(series.len(), 1, "one target: {}", answer.text());
    series.into_iter().next().unwrap().1
}

/// What a client sees through `mpp`, checked against both replicas asked directly: through
/// mpp, every step that either replica has (a replica's scrape delayed on a busy machine is a
/// step nobody has; it is not asserted away).
async fn check(mpp: &Mpp, a: &Prometheus, b: &Prometheus, o: &Outages, when: &str) {
    let path = range_path(o.start, o.end);
    let (of_a, of_b) = (direct_steps(&a.url(), &path).await, direct_steps(&b.url(), &path).await);
    let union: BTreeSet<i64> = of_a.union(&of_b).copied().collect();
    // Each replica asked directly shows its own hole.
    let expected = all_steps(o.start, o.end);
    for (name, own) in [("A", &of_a), ("B", &of_b)] {
        let missing = expected.difference(own).count();
        assert!(missing >= 3, "{when}: replica {name} asked directly misses {missing} steps; expected its hole");
        assert!(union.len() >= own.len() + 3, "{when}: the other replica fills replica {name}'s hole");
    }

    // Through mpp, GET and form POST: every step either has, each from a replica that holds
    // it, in slices.
    let through = get(&mpp.url(&path)).await.unwrap();
    let form = path.split_once('?').unwrap().1.to_string();
    let posted = post_form(&mpp.url("/api/v1/query_range"), &form).await.unwrap();
    for (answer, how) in [(&through, "GET"), (&posted, "POST")] {
        assert_eq!(answer.status, 200, "{when} {how}: {}", answer.text());
        let series = steps(answer);
        assert_eq!(series.len(), 1, "{when} {how}: {}", answer.text());
        let missing: Vec<_> = union.difference(&series[0].1).collect();
        assert!(missing.is_empty(), "{when} {how}: through mpp, steps {missing:?} are missing");
        assert!(sliced(answer), "{when} {how}: no MPP-Slices header: {:?}", answer.headers);
        let warnings = body(answer)["warnings"].to_string();
        assert!(!warnings.contains("merged"), "{when} {how}: a sliced answer is not a merge: {warnings}");
        // Each slice's points are its replica's own, value for value.
        let through = points(answer);
        for (url, from, to) in slices_of(answer) {
            let direct = points(&get(&format!("{url}{path}")).await.unwrap());
            let theirs: Vec<_> = direct.into_iter().filter(|(t, _)| (from..=to).contains(t)).collect();
            let ours: Vec<_> = through.iter().filter(|(t, _)| (from..=to).contains(t)).cloned().collect();
            assert_eq!(ours, theirs, "{when} {how}: the steps {from}..={to} are {url}'s own");
        }
    }

    // A range over A's hole only: B has it whole and answers alone. Unless a scrape of B's
    // was delayed there too (a busy machine): B's own coverage then shows a hole of its own in
    // the window, and merging is what mpp must do.
    let (from, to) = (o.a.0 - 1.0, o.a.1 + 1.0);
    let only_a_path = range_path(from, to);
    let only_a = get(&mpp.url(&only_a_path)).await.unwrap();
    if holed_between(mpp, &b.url(), from, to).await {
        assert!(sliced(&only_a), "{when}: B has a hole of its own there, yet no slices: {:?}", only_a.headers);
    } else {
        assert_eq!(only_a.served_by().as_deref(), Some(b.url().as_str()), "{when}: {:?}", only_a.headers);
        assert!(!sliced(&only_a), "{when}: a window one replica covers is not sliced");
        let b_there = direct_steps(&b.url(), &only_a_path).await;
        assert_eq!(steps(&only_a)[0].1, b_there, "{when}: B's own answer");
        let a_there = direct_steps(&a.url(), &only_a_path).await;
        assert!(b_there.len() >= a_there.len() + 3, "{when}: B has what A lacks");
    }

    // An instant query inside one replica's hole is answered by the other.
    for ((down, up), holed, whole) in [(o.a, a, b), (o.b, b, a)] {
        let at = (down + up) / 2.0;
        let path = format!("/api/v1/query?query=up%7Bjob%3D%22node%22%7D&time={at:.3}");
        let instant = get(&mpp.url(&path)).await.unwrap();
        assert_eq!(instant.served_by().as_deref(), Some(whole.url().as_str()), "{when}: {}", instant.text());
        assert_eq!(body(&instant)["data"]["result"].as_array().map(Vec::len), Some(1), "{when}: {}", instant.text());
        let direct = get(&format!("{}{path}", holed.url())).await.unwrap();
        assert_eq!(
            body(&direct)["data"]["result"].as_array().map(Vec::len),
            Some(0),
            "the holed replica has nothing there"
        );
    }
}

/// The holes mpp's status shows in `replica`'s coverage, `[start, end)` in Unix milliseconds.
async fn holes_of(mpp: &Mpp, replica: &str) -> Vec<(i64, i64)> {
    let status = mpp.status().await;
    let candidates = status["candidates"].as_array().cloned().unwrap_or_default();
    let candidate = candidates.iter().find(|c| c["url"] == replica).expect("the replica is a candidate");
    let holes = candidate["coverage"]["holes"].as_array().cloned().unwrap_or_default();
    let millis = |t: &Value| (t.as_f64().expect("a time in seconds") * 1000.0).round() as i64;
    holes.iter().map(|h| (millis(&h["start"]), millis(&h["end"]))).collect()
}

/// Whether mpp's status shows a hole in `replica`'s coverage between `from` and `to` (Unix
/// seconds).
async fn holed_between(mpp: &Mpp, replica: &str, from: f64, to: f64) -> bool {
    let (from, to) = ((from * 1000.0) as i64, (to * 1000.0) as i64);
    holes_of(mpp, replica).await.iter().any(|&(start, end)| start < to && end > from)
}

/// A replica's real outage between `down` and `up` (Unix seconds), as its own samples of `up`
/// show it: the earliest last sample before the longest gap among its series, and the latest
/// first sample after it (Unix milliseconds).
async fn outage(replica: &Prometheus, (down, up): (f64, f64)) -> (i64, i64) {
    // A restarted Prometheus scrapes again some seconds after it is ready (its scrape manager
    // takes its targets on a 5 s tick).
    let (from, to) = (down - 3.0, up + 10.0);
    if now() < to {
        tokio::time::sleep(Duration::from_secs_f64(to - now())).await;
    }
    let path = format!("/api/v1/query?query=up%5B{}ms%5D&time={to:.3}", ((to - from) * 1000.0) as i64);
    let answer = get(&format!("{}{path}", replica.url())).await.unwrap();
    let value = body(&answer);
    let result = value["data"]["result"].as_array().cloned().unwrap_or_default();
    assert!(!result.is_empty(), "samples of up around the outage: {}", answer.text());
    let (mut last, mut first) = (i64::MAX, i64::MIN);
    for series in result {
        let times: Vec<i64> = series["values"]
            .as_array()
            .expect("a range of samples")
            .iter()
            .map(|point| (point[0].as_f64().unwrap() * 1000.0).round() as i64)
            .collect();
        let (before, after) = times.windows(2).map(|w| (w[0], w[1])).max_by_key(|(a, b)| b - a).expect("two samples");
        assert!(after - before > 3 * SCRAPE_MS, "the outage shows in the replica's own samples: {}", answer.text());
        (last, first) = (last.min(before), first.max(after));
    }
    (last, first)
}

/// mpp's status shows the replica's outage as a hole within one scrape interval of what the
/// replica's own samples show, never narrower: from just after the last sample before it to the
/// first sample after it.
async fn hole_at_scrape_precision(mpp: &Mpp, replica: &Prometheus, when: (f64, f64), name: &str) {
    let (last, first) = outage(replica, when).await;
    let truth = (last + 1, first);
    // The scan that first sees the replica back may end before its first sample: wait for the
    // hole to reach it.
    let covering = |holes: &[(i64, i64)]| holes.iter().copied().find(|&(s, e)| s <= truth.0 && e >= truth.1);
    let what = format!("replica {name}'s hole on /mpp/status covering its outage {truth:?}");
    wait_until(&what, Duration::from_secs(30), || async { covering(&holes_of(mpp, &replica.url()).await).is_some() })
        .await;
    let holes = holes_of(mpp, &replica.url()).await;
    let hole = covering(&holes).expect("a hole covers the outage");
    assert!(
        truth.0 - hole.0 <= SCRAPE_MS && hole.1 - truth.1 <= SCRAPE_MS,
        "replica {name}'s hole {hole:?} is within one scrape interval of its outage {truth:?}: {holes:?}"
    );
}

/// A Prometheus reading through mpp by remote read (its `remote_read` pointed at mpp) gets,
/// over A's outage, the data of B, which holds it whole, never A's holed data, although mpp's
/// strategy (random) would send half of the reads to A.
async fn remote_read_avoids_the_hole(file: &std::path::Path, a: &Prometheus, b: &Prometheus, o: &Outages) {
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;
    mpp.wait_for_closed_holes(2).await;
    let reader = Prometheus::start_remote(Remote::Read, &mpp.url("/api/v1/read")).await;
    let at = o.a.1 + 1.0;
    let range = (at - o.start).floor();
    let query = format!("count_over_time(up{{job=\"node\"}}[{range}s])");
    let ask = |base: String| {
        let url = format!("{base}/api/v1/query?query={}&time={at}", urlencode(&query));
        async move {
            let answer = get(&url).await.unwrap();
            assert_eq!(answer.status, 200, "{}", answer.text());
            body(&answer)["data"]["result"][0]["value"][1].as_str().map(str::to_string)
        }
    };
    let (held, holed) = (ask(b.url()).await, ask(a.url()).await);
    assert!(held.is_some() && held != holed, "B holds more of A's outage than A: {held:?} {holed:?}");
    for _ in 0..10 {
        assert_eq!(ask(reader.url()).await, held, "read through mpp: B's samples over A's outage");
    }

    // Over both outages no replica holds the window whole: the read is answered in time
    // slices, each from a replica that holds it, and counts (about) every scrape, where
    // either replica alone lacks its outage's.
    let count = |base: String| {
        let (at, range) = (o.end, (o.end - o.start).floor());
        let query = format!("count_over_time(up{{job=\"node\"}}[{range}s])");
        let url = format!("{base}/api/v1/query?query={}&time={at}", urlencode(&query));
        async move {
            let answer = get(&url).await.unwrap();
            assert_eq!(answer.status, 200, "{}", answer.text());
            let value = body(&answer)["data"]["result"][0]["value"][1].as_str().map(str::to_string);
            (value.expect("a count").parse::<f64>().unwrap(), range)
        }
    };
    let ((a_alone, range), (b_alone, _)) = (count(a.url()).await, count(b.url()).await);
    let (through, _) = count(reader.url()).await;
    assert!(
        through > a_alone.max(b_alone) && through <= range + 4.0,
        "through mpp {through} samples over {range} s; A alone {a_alone}, B alone {b_alone}"
    );
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(metrics.contains("mpp_merged_requests_total{endpoint=\"read\",outcome=\"sliced\"}"), "{metrics}");
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_through_mpp_have_no_holes_when_each_replica_has_one() {
    let target = Prometheus::start().await;
    let host = target.url().trim_start_matches("http://").to_string();
    let flags = ["--query.lookback-delta=2s"];
    let mut a = Prometheus::start_replica(std::slice::from_ref(&host), &flags).await;
    let mut b = Prometheus::start_replica(std::slice::from_ref(&host), &flags).await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
    let args = ["--endpoints-file", file.to_str().unwrap(), "--selection-interval", "1s"];
    let mpp = Mpp::start(&args).await;

    // Some data on both (Prometheus starts scraping a few seconds after it is ready), then
    // A's outage, then B's, well apart.
    for replica in [&a, &b] {
        let url = format!("{}/api/v1/query?query=up%7Bjob%3D%22node%22%7D", replica.url());
        wait_until("the replicas scrape the target", Duration::from_secs(30), || async {
            get(&url)
                .await
                .is_ok_and(|answer| body(&answer)["data"]["result"].as_array().is_some_and(|r| !r.is_empty()))
        })
        .await;
    }
    let start = now().ceil() + 1.0;
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.stop();
    let a_down = now();
    tokio::time::sleep(DOWN_FOR).await;
    a.start_after_stop().await;
    let a_up = now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    b.stop();
    let b_down = now();
    tokio::time::sleep(DOWN_FOR).await;
    b.start_after_stop().await;
    let b_up = now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let outages = Outages { start, a: (a_down, a_up), b: (b_down, b_up), end: now().floor() - 2.0 };

    mpp.wait_for_closed_holes(2).await;
    hole_at_scrape_precision(&mpp, &a, outages.a, "A").await;
    hole_at_scrape_precision(&mpp, &b, outages.b, "B").await;
    check(&mpp, &a, &b, &outages, "while mpp watched").await;
    remote_read_avoids_the_hole(&file, &a, &b, &outages).await;
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(metrics.contains("mpp_merged_requests_total{endpoint=\"query_range\",outcome=\"sliced\"}"), "{metrics}");
    assert!(metrics.contains("mpp_backend_coverage_ratio{"), "{metrics}");

    // A new mpp, long after the holes: its first answers already avoid them. It traces every
    // request, to show the coverage decision and the slices in the trace.
    mpp.stop().await.unwrap();
    let collector = common::otlp::Collector::default();
    let endpoint = format!("http://{}", collector.start_grpc().await);
    let traced = [&args[..], &["--tracing-endpoint", &endpoint, "--tracing-sampling-ratio", "1"]].concat();
    let mpp = Mpp::start(&traced).await;
    hole_at_scrape_precision(&mpp, &a, outages.a, "A").await;
    hole_at_scrape_precision(&mpp, &b, outages.b, "B").await;
    check(&mpp, &a, &b, &outages, "after mpp restarted").await;
    sliced_in_the_trace(&collector, &[a.url(), b.url()]).await;

    // The status page draws the holes.
    let page = get(&mpp.url("/mpp/status")).await.unwrap().text();
    assert!(page.contains("<svg") && page.matches("fill=\"#c33\"").count() >= 2, "{page}");

    // Slices whose answers are over --merge-max-bytes are not joined: one replica's answer
    // streams on whole, and the header says why.
    mpp.stop().await.unwrap();
    let small = [&args[..], &["--merge-max-bytes", "256"]].concat();
    let mpp = Mpp::start(&small).await;
    let path = range_path(outages.start, outages.end);
    let answer = get(&mpp.url(&path)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!sliced(&answer), "{:?}", answer.headers);
    let warning = answer.headers.get("mpp-warning").map(|v| v.to_str().unwrap().to_string());
    assert!(warning.as_deref().is_some_and(|w| w.contains("--merge-max-bytes")), "{:?}", answer.headers);
    let served = answer.served_by().unwrap();
    assert_eq!(steps(&answer)[0].1, direct_steps(&served, &path).await, "the primary's own answer, whole");
    let metrics = get(&mpp.url("/mpp/metrics")).await.unwrap().text();
    assert!(metrics.contains("outcome=\"too_large\"} 1"), "{metrics}");
}

/// Waits for the trace of a sliced range query: its coverage decision names the slices and
/// their replicas, and the slices' span holds an attempt on each of `replicas`.
async fn sliced_in_the_trace(collector: &common::otlp::Collector, replicas: &[String]) {
    wait_until("a sliced query's trace", Duration::from_secs(30), || async {
        let decided = collector.named("mpp.coverage");
        let sliced = collector.named("mpp.slices");
        decided.iter().any(|s| s.attribute("mpp.route").as_deref() == Some("slices"))
            && sliced.iter().any(|s| collector.children(s).len() >= 2)
    })
    .await;
    let slices = collector.named("mpp.slices").into_iter().find(|s| collector.children(s).len() >= 2).unwrap();
    // The same query's decision: a sibling of its slices' span.
    let decision = collector
        .named("mpp.coverage")
        .into_iter()
        .find(|s| s.trace_id() == slices.trace_id() && s.span.parent_span_id == slices.span.parent_span_id)
        .expect("the sliced query's coverage decision");
    assert_eq!(decision.attribute("mpp.route").as_deref(), Some("slices"));
    let listed = decision.attribute("mpp.replicas").unwrap();
    assert!(replicas.iter().all(|r| listed.contains(r.as_str())), "{listed}");
    let mut asked: Vec<String> =
        collector.children(&slices).iter().filter_map(|attempt| attempt.attribute("mpp.replica")).collect();
    asked.sort();
    asked.dedup();
    let mut expected = replicas.to_vec();
    expected.sort();
    assert_eq!(asked, expected, "the slices' attempts, on each replica");
}

/// A replica stand-in that passes every probe but answers the proxied query `vector(1)` with
/// the plain-text 503 of a Prometheus still replaying its write-ahead log.
async fn replaying_replica() -> (String, tokio::task::JoinHandle<()>) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                    let query = request.uri().query().unwrap_or("").to_string();
                    let (status, body) = match request.uri().path() {
                        "/-/ready" => (200, "ready"),
                        "/metrics" => (200, "prometheus_tsdb_head_samples_appended_total 10\n"),
                        "/api/v1/query" if query.contains("vector") => (503, "Service Unavailable"),
                        _ => (
                            200,
                            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#,
                        ),
                    };
                    let mut response = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_a_failed_attempt_says_which_replica_failed() {
    let (a, _server) = replaying_replica().await;
    let b = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = endpoints_file(dir.path(), &[a.clone(), b.url()]);
    let args =
        ["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random", "--affinity-options", "none"];
    let mpp = Mpp::start(&args).await;
    mpp.wait_selected(&[&a, &b.url()]).await;
    let mut failed_over = None;
    for _ in 0..50 {
        let answer = get(&mpp.url("/api/v1/query?query=vector(1)")).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.served_by().as_deref(), Some(b.url().as_str()));
        if answer.headers.contains_key("mpp-failover-from") {
            failed_over = Some(answer);
            break;
        }
    }
    let answer = failed_over.expect("a random choice of A among 50 requests, retried on B");
    assert_eq!(answer.headers["mpp-failover-from"], a.as_str());
    // A note in `infos`, not `warnings`: the answer is whole (Grafana shows warnings on the
    // panel).
    let infos = body(&answer)["infos"].to_string();
    assert!(infos.contains(&format!("answered by {} after {} failed", b.url(), a)), "{infos}");
    assert!(body(&answer)["warnings"].is_null(), "no warning for a whole answer");
    assert_eq!(body(&answer)["data"]["result"].as_array().map(Vec::len), Some(1), "the answer itself is whole");
}

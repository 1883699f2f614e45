//! Transparency: mpp's answers are exactly what a replica holding the data answers. Two real
//! replicas scrape the same targets every second with a 2 s lookback (so that a hole shows at
//! once); several hundred query shapes (`transparency/shapes.rs`) are asked through mpp and
//! directly.
//!
//! - With no hole, every shape as range and instant query, GET and form POST, through mpp and
//!   directly at the replica mpp names in `MPP.ServedBy`: byte-identical answers.
//! - With a hole in each replica at different times, every shape as a range query over both
//!   holes: each step through mpp equals that step of a replica holding the step's whole read
//!   window (worked out from the replicas' own samples around each stop and restart, not from
//!   mpp), never of one
//!   whose window was holed; steps no replica holds come whole from one replica and are named
//!   by a warning. And instant queries inside each hole come from the replica that holds them.
//!   Steps whose windows reach back to where the replicas began scraping are left out: the one
//!   that began later lacks the other's first seconds, which mpp rightly weighs as a hole.
//!
//! Each part runs with its own replicas, in one test each, so that they run side by side.
//! Beside this file: the shapes (`shapes.rs`), the test's own scrape target (`target.rs`),
//! asking and comparing (`asking.rs`), what the test knows of each hole (`holes.rs`) and the
//! checks over the holes (`over_holes.rs`).

#[path = "transparency/asking.rs"]
mod asking;
mod common;
#[path = "transparency/holes.rs"]
mod holes;
#[path = "transparency/over_holes.rs"]
mod over_holes;
#[path = "transparency/shapes.rs"]
mod shapes;
#[path = "transparency/target.rs"]
mod target;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use asking::{Ask, ask, difference, in_order, json, same};
use common::{Mpp, Prometheus, endpoints_file, get, post_form, wait_until};
use futures_util::stream::{self, StreamExt};
use holes::Replica;
use over_holes::{Tally, Timeline, instant_in_hole, range_over_holes};
use shapes::{Refused, Shape};
use target::Target;

/// How long each replica is down.
const DOWN_FOR: Duration = Duration::from_secs(6);
/// Requests in flight at once (each shape asks several at a time).
const PARALLEL: usize = 4;
/// The most failures printed in full.
const SHOWN: usize = 40;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Fails the test with every failure counted and the first [`SHOWN`] in its message (all of
/// them on stderr).
fn report(part: &str, failures: Vec<String>, checked: usize) {
    eprintln!("{part}: {checked} checks, {} failures", failures.len());
    if failures.is_empty() {
        return;
    }
    for failure in &failures {
        eprintln!("FAILED {failure}");
    }
    let shown: Vec<&str> = failures.iter().take(SHOWN).map(String::as_str).collect();
    panic!("{part}: {} of {checked} checks failed; the first {}:\n{}", failures.len(), shown.len(), shown.join("\n"));
}

/// The targets, two replicas scraping them and mpp in front, all stopped when dropped.
struct Setup {
    _target: Target,
    _prometheus: Prometheus,
    a: Prometheus,
    b: Prometheus,
    mpp: Mpp,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Starts everything and waits until both replicas hold samples of both targets.
    async fn start() -> Setup {
        let target = Target::start().await;
        let prometheus = Prometheus::start().await;
        let hosts = [prometheus.url().trim_start_matches("http://").to_string(), target.host.clone()];
        let flags = ["--query.lookback-delta=2s"];
        let a = Prometheus::start_replica(&hosts, &flags).await;
        let b = Prometheus::start_replica(&hosts, &flags).await;
        let dir = tempfile::tempdir().expect("temporary folder");
        let file = endpoints_file(dir.path(), &[a.url(), b.url()]);
        let mpp =
            Mpp::start(&["--endpoints-file", file.to_str().expect("a UTF-8 path"), "--selection-interval", "1s"]).await;
        for replica in [&a, &b] {
            let url = format!(
                "{}/api/v1/query?query=count(%7Bjob%3D%22node%22%2C__name__%3D~%22mpp_test_wave%7Cgo_goroutines%22%7D)",
                replica.url()
            );
            wait_until("the replicas scrape both targets", Duration::from_secs(30), || async {
                get(&url).await.is_ok_and(|answer| json(&answer)["data"]["result"][0]["value"][1] == "3")
            })
            .await;
        }
        Setup { _target: target, _prometheus: prometheus, a, b, mpp, _dir: dir }
    }
}

/// Checks that Prometheus refuses exactly the shapes meant to be refused, as instant query at
/// `time` and as range query from `start` to `end`, asking `replica` directly.
async fn validate(replica: &str, shapes: &[Shape], start: i64, end: i64) {
    let asks = [Ask::Instant { time: end }, Ask::Range { start, end }];
    let wrong: Vec<String> = stream::iter(shapes.iter().flat_map(|shape| asks.map(|what| (shape, what))))
        .map(|(shape, what)| async move {
            let answer = ask(replica, &shape.query, what, false).await.unwrap_or_else(|e| panic!("{e}"));
            let refused = answer.status != 200 || json(&answer)["status"] != "success";
            (refused != what.refused(shape))
                .then(|| format!("{what:?} {}: Prometheus answered {}", shape.query, answer.text()))
        })
        .buffer_unordered(PARALLEL)
        .filter_map(|wrong| async { wrong })
        .collect()
        .await;
    let refused = shapes.iter().filter(|s| s.refused != Refused::Never).count();
    eprintln!("{} shapes, {refused} refused by Prometheus as range or instant query", shapes.len());
    assert!(wrong.is_empty(), "shapes Prometheus 2.42 takes otherwise than written down:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_holes_are_the_serving_replicas_byte_for_byte() {
    let started = Instant::now();
    let setup = Setup::start().await;
    // Some data for every shape to read (the longest windows reach back to before the replicas
    // started, which they lack alike), then a range that ends in the past (negative offsets
    // read 4 s ahead).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let end = (now() / 1000 - 6) * 1000;
    let (start, fixed) = (end - 10_000, end - 7_000);
    let shapes = shapes::all(fixed);
    validate(&setup.a.url(), &shapes, start, end).await;

    let asks = [Ask::Range { start, end }, Ask::Instant { time: end - 3_500 }];
    let mpp = setup.mpp.url("");
    let cases = shapes
        .iter()
        .flat_map(|shape| asks.iter().flat_map(move |&what| [false, true].map(|post| (shape, what, post))));
    let checked = cases.clone().count();
    let failures: Vec<String> = stream::iter(cases)
        .map(|(shape, what, post)| {
            let mpp = mpp.clone();
            async move { same_as_serving_replica(&mpp, shape, what, post).await }
        })
        .buffer_unordered(PARALLEL)
        .filter_map(|failure| async { failure })
        .collect()
        .await;
    let refused = refused_parameters(&mpp, &setup.a.url(), (start, end)).await;
    eprintln!("no hole: {checked} answers and {} refused requests compared in {:?}", refused.1, started.elapsed());
    report("no hole", failures.into_iter().chain(refused.0).collect(), checked + refused.1);
}

/// Requests Prometheus refuses for their parameters, not their query, GET and form POST: mpp's
/// answer is the replica's, byte for byte (the one it names, or A when it answers itself).
/// Returns the failures and how many were compared.
async fn refused_parameters(mpp: &str, a: &str, (start, end): (i64, i64)) -> (Vec<String>, usize) {
    let (start, end) = (asking::seconds(start), asking::seconds(end));
    let range = "/api/v1/query_range";
    let requests = [
        (range, format!("query=up&start={start}&end={end}&step=0")),
        (range, format!("query=up&start={start}&end={end}&step=-1")),
        (range, format!("query=up&start={end}&end={start}&step=1")),
        (range, format!("query=up&start={start}&end={end}&step=0.0001")),
        (range, format!("query=up&start={start}&end={end}")),
        (range, format!("query=up&start=yesterday&end={end}&step=1")),
        (range, format!("start={start}&end={end}&step=1")),
        ("/api/v1/query", "query=up&time=soon".to_string()),
        ("/api/v1/query", "query=up&time=1&timeout=-1s".to_string()),
        ("/api/v1/query", String::new()),
    ];
    let mut failures = Vec::new();
    for (path, form) in &requests {
        for post in [false, true] {
            let asked = |base: &str| {
                let url = format!("{base}{path}");
                async move { if post { post_form(&url, form).await } else { get(&format!("{url}?{form}")).await } }
            };
            let through = match asked(mpp).await {
                Ok(answer) => answer,
                Err(e) => {
                    failures.push(format!("{path}?{form}: mpp did not answer: {e}"));
                    continue;
                }
            };
            let served = through.served_by().unwrap_or_else(|| a.to_string());
            match asked(&served).await {
                Ok(direct) if direct.status == 200 => {
                    failures.push(format!("{path}?{form}: {served} accepted it: {}", direct.text()))
                }
                Ok(direct) if same(&through, &direct) => {}
                Ok(direct) => failures.push(format!(
                    "{path}?{form} (POST: {post}): mpp answered {} where {served} answers {}: {}",
                    through.status,
                    direct.status,
                    difference(&through.body, &direct.body)
                )),
                Err(e) => failures.push(format!("{path}?{form}: {served} did not answer: {e}")),
            }
        }
    }
    (failures, requests.len() * 2)
}

/// Asks mpp, then the replica it names, the same: the same status and body, byte for byte.
async fn same_as_serving_replica(mpp: &str, shape: &Shape, what: Ask, post: bool) -> Option<String> {
    let how = if post { "POST" } else { "GET" };
    let through = match ask(mpp, &shape.query, what, post).await {
        Ok(answer) => answer,
        Err(e) => return Some(e),
    };
    let Some(served) = through.served_by() else {
        return Some(format!("{what:?} {how} {}: no MPP.ServedBy header: {}", shape.query, through.text()));
    };
    let direct = match ask(&served, &shape.query, what, post).await {
        Ok(answer) => answer,
        Err(e) => return Some(e),
    };
    if !in_order(&shape.query, &through) {
        return Some(format!(
            "{what:?} {how} {}: the series are not in the order asked for: {}",
            shape.query,
            through.text()
        ));
    }
    (!same(&through, &direct)).then(|| {
        format!(
            "{what:?} {how} {}: mpp answered {} where {served} answers {}: {}",
            shape.query,
            through.status,
            direct.status,
            difference(&through.body, &direct.body)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_holes_come_step_by_step_from_replicas_holding_each_window() {
    let started = Instant::now();
    let mut setup = Setup::start().await;
    // Data on both for the windows of the first steps, then A's outage, then B's. A restarted
    // Prometheus scrapes again up to 5 s after it is ready, so each hole lasts about 12 s and
    // about 6 s lie between them: a window of a few seconds sees one hole at a time, one of 20 s
    // reaches both.
    tokio::time::sleep(Duration::from_secs(12)).await;
    // The replica that began scraping later lacks the other's first seconds (a hole to mpp,
    // which it weighs against an outage's), and this test's account of each replica is its
    // outage alone: steps whose windows reach back there are not checked. So that the first
    // steps of most shapes are (their windows read up to 25 s back), A's outage waits for
    // that much data on both; A's outage begins 8 s after the range's first step.
    let began = first_sample(&setup.a.url()).await.max(first_sample(&setup.b.url()).await);
    while now() < began + 25_000 + 8_000 + 2 * holes::SCRAPE {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_outage = outage(&mut setup.a).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let b_outage = outage(&mut setup.b).await;
    let (start, end) = ((a_outage.0 / 1000 - 8) * 1000, (b_outage.1 / 1000 + 10) * 1000);
    // The last steps read up to 4 s ahead (negative offsets), and mpp learns of the holes.
    while now() < end + 6_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    setup.mpp.wait_for_closed_holes(2).await;
    let gaps = |url: String| async move {
        let raw = ask(&url, r#"up{job="node"}[2m]"#, Ask::Instant { time: end + 6_000 }, false).await;
        holes::gaps(&json(&raw.unwrap_or_else(|e| panic!("{e}"))))
    };
    let timeline = Timeline {
        start,
        end,
        began,
        a: Replica::new("A", setup.a.url(), a_outage, gaps(setup.a.url()).await),
        b: Replica::new("B", setup.b.url(), b_outage, gaps(setup.b.url()).await),
    };
    let relative = |(from, to): (i64, i64)| (from - start, to - start);
    eprintln!(
        "ms from the range's start: A stopped and ready {:?}, hole {:?}, other gaps {:?}; B {:?}, {:?}, {:?}; \
         mpp's holes: {}",
        relative(a_outage),
        relative(timeline.a.hole),
        timeline.a.gaps,
        relative(b_outage),
        relative(timeline.b.hole),
        timeline.b.gaps,
        setup.mpp.status().await["candidates"]
    );

    // `@` shapes fix a time inside A's outage: every step reads A's hole.
    let shapes = shapes::all((timeline.a.hole.0 + timeline.a.hole.1) / 2 / 1000 * 1000);
    validate(&setup.a.url(), &shapes, start, end).await;
    let mpp = setup.mpp.url("");
    let (timeline, mpp) = (&timeline, mpp.as_str());
    // Every other shape is sent as a form POST, whose body mpp rewrites for each slice.
    let ranges = stream::iter(shapes.iter().enumerate())
        .map(|(i, shape)| async move { range_over_holes(mpp, shape, i % 2 == 1, timeline).await })
        .buffer_unordered(PARALLEL)
        .fold(Tally::default(), |tally, one| async move { tally.add(one) })
        .await;
    eprintln!(
        "holes: {} range queries compared in {:?}: {} steps, {} where one replica holds the window and the other's is holed, {} where both are holed; {} not checked",
        shapes.len(),
        started.elapsed(),
        ranges.steps,
        ranges.one_holds,
        ranges.nobody_holds,
        ranges.unchecked
    );
    let mut instants = Tally::default();
    for replica in [&timeline.a, &timeline.b] {
        let time = (replica.hole.0 + replica.hole.1) / 2;
        instants = stream::iter(&shapes)
            .map(|shape| async move { instant_in_hole(mpp, shape, time, timeline).await })
            .buffer_unordered(PARALLEL)
            .fold(instants, |tally, one| async move { tally.add(one) })
            .await;
    }
    eprintln!(
        "holes: {} instant queries inside the holes, {} where one replica holds the window and the other's is holed, {} where both are holed; {} not checked",
        instants.steps, instants.one_holds, instants.nobody_holds, instants.unchecked
    );
    let checked = ranges.steps + instants.steps;
    let failures = ranges.add(instants).failures;
    eprintln!("holes: done in {:?}", started.elapsed());
    report("holes", failures, checked);
}

/// When `replica` took its first sample of a scrape target (Unix milliseconds).
async fn first_sample(replica: &str) -> i64 {
    let raw = ask(replica, r#"up{job="node"}[10m]"#, Ask::Instant { time: now() }, false).await;
    let raw = json(&raw.unwrap_or_else(|e| panic!("{e}")));
    let first = raw["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| series["values"][0][0].as_f64().map(|t| (t * 1000.0).round() as i64));
    first.min().unwrap_or_else(|| panic!("{replica} holds no sample of `up`: {raw}"))
}

/// Stops `replica` the way a rollout does for [`DOWN_FOR`], starts it again, and says when
/// it went down and when it was ready again (Unix milliseconds).
async fn outage(replica: &mut Prometheus) -> (i64, i64) {
    let down = now();
    replica.stop();
    tokio::time::sleep(DOWN_FOR).await;
    replica.start_after_stop().await;
    (down, now())
}

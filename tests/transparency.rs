//! Transparency: mpp's answers are exactly what a replica holding the data answers. Two real
//! replicas scrape the same targets every second with a 2 s lookback (so that a hole shows at
//! once); several hundred query shapes (`transparency/shapes.rs`) are asked through mpp and
//! directly.
//!
//! - With no hole, every shape as range and instant query, GET and form POST, through mpp and
//!   directly at the replica mpp names in `MPP.ServedBy`: byte-identical answers.
//! - With a hole in each replica at different times, every shape as a range query over both
//!   holes: each step through mpp equals that step of a replica holding the step's whole read
//!   window (worked out from when the test stopped each replica, not from mpp), never of one
//!   whose window was holed; steps no replica holds come whole from one replica and are named
//!   by a warning. And instant queries inside each hole come from the replica that holds them.
//!
//! Each part runs with its own replicas, in one test each, so that they run side by side.

mod common;
#[path = "transparency/holes.rs"]
mod holes;
#[path = "transparency/shapes.rs"]
mod shapes;
#[path = "transparency/target.rs"]
mod target;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Answer, Mpp, Prometheus, endpoints_file, get, post_form, wait_until};
use futures_util::stream::{self, StreamExt};
use holes::{Holds, Replica};
use serde_json::Value;
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

/// Unix milliseconds as Prometheus reads them in a parameter.
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// What is asked: a range query (1 s steps) or an instant query.
#[derive(Debug, Clone, Copy)]
enum Ask {
    Range { start: i64, end: i64 },
    Instant { time: i64 },
}

impl Ask {
    fn path(self) -> &'static str {
        match self {
            Ask::Range { .. } => "/api/v1/query_range",
            Ask::Instant { .. } => "/api/v1/query",
        }
    }

    fn form(self, query: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("query", query);
        match self {
            Ask::Range { start, end } => {
                form.append_pair("start", &seconds(start)).append_pair("end", &seconds(end)).append_pair("step", "1")
            }
            Ask::Instant { time } => form.append_pair("time", &seconds(time)),
        };
        form.finish()
    }

    fn refused(self, shape: &Shape) -> bool {
        match self {
            Ask::Range { .. } => shape.refused != Refused::Never,
            Ask::Instant { .. } => shape.refused == Refused::Always,
        }
    }
}

/// Asks `base` (a replica or mpp) `query`, with GET or with a form POST.
async fn ask(base: &str, query: &str, what: Ask, post: bool) -> Result<Answer, String> {
    let form = what.form(query);
    let answer = if post {
        post_form(&format!("{base}{}", what.path()), &form).await
    } else {
        get(&format!("{base}{}?{form}", what.path())).await
    };
    answer.map_err(|e| format!("{query}: {base} did not answer: {e}"))
}

fn json(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
}

/// Whether two answers are the same: status and body byte for byte, except that the series of
/// an instant vector may come in any order. Prometheus writes those in the order of its own
/// hash maps, which changes from one evaluation to the next (`histogram_quantile` shows it),
/// so only the set is compared; `sort` and `sort_desc` are checked for their order apart.
fn same(ours: &Answer, theirs: &Answer) -> bool {
    ours.status == theirs.status && (ours.body == theirs.body || unordered(ours) == unordered(theirs))
}

/// An answer as JSON, with an instant vector's series sorted (see [`same`]).
fn unordered(answer: &Answer) -> Value {
    let mut answer = json(answer);
    if answer["data"]["resultType"] == "vector"
        && let Some(result) = answer["data"]["result"].as_array_mut()
    {
        result.sort_by_key(Value::to_string);
    }
    answer
}

/// Whether an instant answer of `sort(…)` or `sort_desc(…)` is in the order asked for (`NaN`
/// aside, which Prometheus places last); any other answer is.
fn in_order(query: &str, answer: &Answer) -> bool {
    let descending = query.starts_with("sort_desc(");
    if !descending && !query.starts_with("sort(") {
        return true;
    }
    let values: Vec<f64> = json(answer)["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|series| series["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| !v.is_nan())
        .collect();
    values.windows(2).all(|w| if descending { w[0] >= w[1] } else { w[0] <= w[1] })
}

/// The first difference of two bodies, with some context, for a failure message.
fn difference(ours: &[u8], theirs: &[u8]) -> String {
    let at = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
    let context =
        |body: &[u8]| String::from_utf8_lossy(&body[at.saturating_sub(60)..(at + 100).min(body.len())]).into_owned();
    format!(
        "{} vs {} bytes, first difference at byte {at}: mpp «{}» replica «{}»",
        ours.len(),
        theirs.len(),
        context(ours),
        context(theirs)
    )
}

/// Fails the test with every failure counted and the first [`SHOWN`] in full.
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
    // Enough data for the shapes that read 20 s back, then a range that ends in the past
    // (negative offsets read 4 s ahead).
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
    eprintln!("no hole: {checked} answers compared in {:?}", started.elapsed());
    report("no hole", failures, checked);
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

/// When each replica was down, and the range and times the checks ask about.
struct Timeline {
    start: i64,
    end: i64,
    a: Replica,
    b: Replica,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_holes_come_step_by_step_from_replicas_holding_each_window() {
    let started = Instant::now();
    let mut setup = Setup::start().await;
    // Data on both for the windows of the first steps, then A's outage, then B's, well apart:
    // a window of up to 12 s sees one hole at a time.
    tokio::time::sleep(Duration::from_secs(12)).await;
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
        "holes: {} range queries compared in {:?}: {} steps, {} where one replica holds the window and the other's is holed, {} where both are holed",
        shapes.len(),
        started.elapsed(),
        ranges.steps,
        ranges.one_holds,
        ranges.nobody_holds
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
        "holes: {} instant queries inside the holes, {} where one replica holds the window and the other's is holed, {} where both are holed",
        instants.steps, instants.one_holds, instants.nobody_holds
    );
    let checked = ranges.steps + instants.steps;
    let failures = ranges.add(instants).failures;
    eprintln!("holes: done in {:?}", started.elapsed());
    report("holes", failures, checked);
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

/// A step's values, short enough for a message.
fn shown(values: Option<&std::collections::BTreeMap<String, String>>) -> String {
    let text = format!("{:?}", values.cloned().unwrap_or_default());
    if text.len() > 400 { format!("{}… ({} series)", &text[..400], values.map_or(0, |v| v.len())) } else { text }
}

/// What the range queries over both holes showed.
#[derive(Debug, Default)]
struct Tally {
    /// Steps compared.
    steps: usize,
    /// Steps whose window one replica holds and the other's is holed: where the choice shows.
    one_holds: usize,
    /// Steps whose window both replicas' holes reach.
    nobody_holds: usize,
    failures: Vec<String>,
}

impl Tally {
    fn add(mut self, other: Tally) -> Tally {
        self.steps += other.steps;
        self.one_holds += other.one_holds;
        self.nobody_holds += other.nobody_holds;
        self.failures.extend(other.failures);
        self
    }

    fn failed(failure: String) -> Tally {
        Tally { failures: vec![failure], ..Tally::default() }
    }
}

/// The shape as a range query over both holes, through mpp and directly at both replicas,
/// compared step by step.
async fn range_over_holes(mpp: &str, shape: &Shape, post: bool, timeline: &Timeline) -> Tally {
    let Timeline { start, end, a, b } = timeline;
    let what = Ask::Range { start: *start, end: *end };
    let q = &shape.query;
    let (through, of_a, of_b) =
        tokio::join!(ask(mpp, q, what, post), ask(&a.url, q, what, false), ask(&b.url, q, what, false));
    let (through, of_a, of_b) = match (through, of_a, of_b) {
        (Ok(t), Ok(x), Ok(y)) => (t, x, y),
        (t, x, y) => {
            return Tally::failed([t.err(), x.err(), y.err()].into_iter().flatten().collect::<Vec<_>>().join("; "));
        }
    };
    if what.refused(shape) {
        // The error of either replica (one may lack the data that the evaluation fails on).
        return match same(&through, &of_a) || same(&through, &of_b) {
            true => Tally::default(),
            false => Tally::failed(format!("{q}: refused: {}", difference(&through.body, &of_a.body))),
        };
    }
    let answer = json(&through);
    if through.status != 200 || answer["status"] != "success" {
        return Tally::failed(format!("{q}: mpp answered {}: {}", through.status, through.text()));
    }
    let slices =
        through.headers.get("mpp-slices").map_or("none".into(), |v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let routes = match routes(&through, [a, b], (*start, *end)) {
        Ok(routes) => routes,
        Err(e) => return Tally::failed(format!("{q}: {e}")),
    };
    let answers = Answers {
        ours: holes::steps(&answer),
        theirs: [holes::steps(&json(&of_a)), holes::steps(&json(&of_b))],
        slices,
        routes,
    };
    let mut tally = Tally::default();
    let mut nobody_holds = Vec::new();
    for t in (*start..=*end).step_by(1_000) {
        let windows: Vec<(i64, i64)> = shape.reads.iter().map(|r| r.at(t, *start, *end)).collect();
        let holds = [a.holds(&windows), b.holds(&windows)];
        tally.steps += 1;
        if holds.contains(&Holds::Whole) && holds.contains(&Holds::Holed) {
            tally.one_holds += 1;
        }
        let failure = if holds == [Holds::Holed; 2] {
            nobody_holds.push(t);
            answers.check_unheld_step(t, [a, b].map(|r| r.missing(&windows)))
        } else {
            answers.check_held_step(t, holds)
        };
        tally.failures.extend(failure.map(|f| format!("{q}: step {} (+{} ms): {f}", seconds(t), t - start)));
    }
    tally.nobody_holds += nobody_holds.len();
    if !nobody_holds.is_empty() {
        tally.failures.extend(incomplete_named(q, &answer, &nobody_holds));
    }
    tally
}

/// Which replica (0: A, 1: B) mpp says answered which steps (first and last, Unix
/// milliseconds): its `MPP-Slices` header, or else `MPP.ServedBy` for all of `range`.
fn routes(answer: &Answer, replicas: [&Replica; 2], range: (i64, i64)) -> Result<Vec<(usize, i64, i64)>, String> {
    let index = |url: &str| replicas.iter().position(|r| r.url == url).ok_or(format!("{url} is neither replica"));
    let Some(header) = answer.headers.get("mpp-slices") else {
        let served = answer.served_by().ok_or("no MPP.ServedBy header and no MPP-Slices")?;
        return Ok(vec![(index(&served)?, range.0, range.1)]);
    };
    let header = header.to_str().map_err(|e| format!("MPP-Slices is not text: {e}"))?;
    let millis = |t: &str| {
        t.parse::<f64>().map(|s| (s * 1000.0).round() as i64).map_err(|e| format!("MPP-Slices {header}: {e}"))
    };
    header
        .split(", ")
        .map(|slice| {
            let (url, steps) = slice.split_once(' ').ok_or(format!("MPP-Slices {header}: no steps in {slice}"))?;
            let (first, last) = steps.split_once('-').ok_or(format!("MPP-Slices {header}: no range in {steps}"))?;
            Ok((index(url)?, millis(first)?, millis(last)?))
        })
        .collect()
}

/// Which replica (0: A, 1: B) misses clearly less of a window (by more than two scrape
/// intervals), given the milliseconds of it each misses.
fn least_missing(missing: [i64; 2]) -> Option<usize> {
    (0..2).find(|&i| missing[i] + 2 * holes::SCRAPE < missing[1 - i])
}

/// One range query's answers, through mpp and from replicas A and B directly.
struct Answers {
    ours: holes::Steps,
    theirs: [holes::Steps; 2],
    /// mpp's `MPP-Slices` header, for messages.
    slices: String,
    /// Which replica mpp says answered which steps (see [`routes`]).
    routes: Vec<(usize, i64, i64)>,
}

impl Answers {
    /// Whether mpp's step `t` is replica `i`'s, series by series (no series at all counts).
    fn is(&self, i: usize, t: i64) -> bool {
        let none = Default::default();
        self.theirs[i].get(&t).unwrap_or(&none) == self.ours.get(&t).unwrap_or(&none)
    }

    /// Every value at step `t`, for a message.
    fn values(&self, t: i64, holds: [Holds; 2]) -> String {
        format!(
            "mpp {}; A ({:?}) {}; B ({:?}) {}; mpp's slices: {}",
            shown(self.ours.get(&t)),
            holds[0],
            shown(self.theirs[0].get(&t)),
            holds[1],
            shown(self.theirs[1].get(&t)),
            self.slices
        )
    }

    /// Step `t` is that of a replica whose window was not holed (one is not), and mpp says it
    /// came from one.
    fn check_held_step(&self, t: i64, holds: [Holds; 2]) -> Option<String> {
        let holding: Vec<usize> = (0..2).filter(|&i| holds[i] != Holds::Holed).collect();
        let names: Vec<&str> = holding.iter().map(|&i| ["A", "B"][i]).collect();
        if !holding.iter().any(|&i| self.is(i, t)) {
            return Some(format!("expected the values of {names:?}, which hold its window: {}", self.values(t, holds)));
        }
        let Some(&(by, _, _)) = self.routes.iter().find(|&&(_, first, last)| (first..=last).contains(&t)) else {
            return Some(format!("no slice holds this step: {}", self.values(t, holds)));
        };
        (holds[by] == Holds::Holed).then(|| {
            format!(
                "mpp says {} answered it, whose window is holed, where {names:?} hold it: {}",
                ["A", "B"][by],
                self.values(t, holds)
            )
        })
    }

    /// Step `t`, whose window both replicas' holes reach (`missing` of it, milliseconds), is
    /// one replica's whole, and that of the one missing the least when that is clear (by more
    /// than two scrape intervals).
    fn check_unheld_step(&self, t: i64, missing: [i64; 2]) -> Option<String> {
        let holed = [Holds::Holed; 2];
        if !self.is(0, t) && !self.is(1, t) {
            return Some(format!(
                "neither replica holds its window, and the answer is neither's: {}",
                self.values(t, holed)
            ));
        }
        let least = least_missing(missing)?;
        (!self.is(least, t)).then(|| {
            format!(
                "neither holds its window; {} misses the least of it ({} ms vs {} ms of A and B), yet the answer is not its: {}",
                ["A", "B"][least],
                missing[0],
                missing[1],
                self.values(t, holed)
            )
        })
    }
}

/// Checks that the answer's `warnings` say the steps `steps` (that no replica holds) may be
/// incomplete, and name each of them.
fn incomplete_named(query: &str, answer: &Value, steps: &[i64]) -> Option<String> {
    let warnings: Vec<&str> = answer["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let said = warnings.iter().find(|w| w.to_lowercase().contains("incomplete"));
    let range = format!("{}..{}", seconds(steps[0]), seconds(steps[steps.len() - 1]));
    let Some(warning) = said else {
        return Some(format!(
            "{query}: steps {range} read holes of both replicas, yet no warning says they may be incomplete: {warnings:?}"
        ));
    };
    let unnamed: Vec<String> = steps
        .iter()
        .filter(|&&t| holes::names_step(warning, t) == Some(false) && !warning.contains(" more"))
        .map(|&t| seconds(t))
        .collect();
    if holes::names_step(warning, steps[0]).is_none() {
        return Some(format!("{query}: the warning names no steps (expected {range}): {warning}"));
    }
    (!unnamed.is_empty()).then(|| {
        format!("{query}: steps {unnamed:?} read holes of both replicas, but the warning does not name them: {warning}")
    })
}

/// The shape as an instant query at `time` inside a hole: the answer of a replica that holds
/// its window, byte for byte.
async fn instant_in_hole(mpp: &str, shape: &Shape, time: i64, timeline: &Timeline) -> Tally {
    let windows: Vec<(i64, i64)> = shape.reads.iter().map(|r| r.at(time, time, time)).collect();
    let holds = [&timeline.a, &timeline.b].map(|r| r.holds(&windows));
    let tally = Tally {
        steps: 1,
        one_holds: usize::from(holds.contains(&Holds::Whole) && holds.contains(&Holds::Holed)),
        nobody_holds: usize::from(holds == [Holds::Holed; 2]),
        failures: Vec::new(),
    };
    match instant_failure(mpp, shape, time, timeline, holds).await {
        Some(failure) => tally.add(Tally::failed(failure)),
        None => tally,
    }
}

/// What is wrong with the shape's instant answer at `time`, whose window the replicas hold
/// as `holds` says.
async fn instant_failure(
    mpp: &str,
    shape: &Shape,
    time: i64,
    timeline: &Timeline,
    holds: [Holds; 2],
) -> Option<String> {
    let what = Ask::Instant { time };
    let q = &shape.query;
    let replicas = [&timeline.a, &timeline.b];
    let (through, of_a, of_b) = tokio::join!(
        ask(mpp, q, what, false),
        ask(&replicas[0].url, q, what, false),
        ask(&replicas[1].url, q, what, false)
    );
    let (through, direct) = match (through, of_a, of_b) {
        (Ok(t), Ok(x), Ok(y)) => (t, [x, y]),
        (t, x, y) => return Some([t.err(), x.err(), y.err()].into_iter().flatten().collect::<Vec<_>>().join("; ")),
    };
    let at = format!("{q} at {}", seconds(time));
    let Some(served) = through.served_by() else {
        return Some(format!("{at}: no MPP.ServedBy header: {}", through.text()));
    };
    let Some(i) = replicas.iter().position(|r| r.url == served) else {
        return Some(format!("{at}: served by {served}, neither replica"));
    };
    let values = || {
        format!(
            "mpp {}; A ({:?}) {}; B ({:?}) {}",
            through.text(),
            holds[0],
            direct[0].text(),
            holds[1],
            direct[1].text()
        )
    };
    if holds.iter().any(|&h| h != Holds::Holed) {
        if holds[i] == Holds::Holed {
            return Some(format!(
                "{at}: served by {}, whose window is holed, while the other holds it: {}",
                replicas[i].name,
                values()
            ));
        }
        if !same(&through, &direct[i]) {
            return Some(format!(
                "{at}: not {}'s answer: {}",
                replicas[i].name,
                difference(&through.body, &direct[i].body)
            ));
        }
        return None;
    }
    // Neither holds it: one replica's data, whole, that of the one missing the least.
    if unordered(&through)["data"] != unordered(&direct[i])["data"] {
        return Some(format!(
            "{at}: neither replica holds its window, and the answer is not {}'s: {}",
            replicas[i].name,
            values()
        ));
    }
    let windows: Vec<(i64, i64)> = shape.reads.iter().map(|r| r.at(time, time, time)).collect();
    let missing = replicas.map(|r| r.missing(&windows));
    let least = least_missing(missing).filter(|&least| least != i)?;
    Some(format!(
        "{at}: neither holds its window; {} misses the least of it ({} ms vs {} ms of A and B), yet {} answered: {}",
        replicas[least].name,
        missing[0],
        missing[1],
        replicas[i].name,
        values()
    ))
}

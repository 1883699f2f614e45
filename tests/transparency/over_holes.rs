//! The checks of answers over holes: a range query over both replicas' holes compared step
//! by step, and instant queries inside each hole, against what the test knows of the holes.

use serde_json::Value;

use crate::asking::{Ask, ask, difference, json, same, seconds, unordered};
use crate::common::Answer;
use crate::holes::{self, Holds, Replica};
use crate::shapes::Shape;

/// When each replica was down, and the range and times the checks ask about.
pub struct Timeline {
    pub start: i64,
    pub end: i64,
    /// When the replica that began scraping later took its first sample: a step whose window
    /// reaches back to it is not checked (see [`Timeline::checked`]).
    pub began: i64,
    pub a: Replica,
    pub b: Replica,
}

impl Timeline {
    /// Whether a step reading `windows` is checked: not when one reaches back to where the
    /// replicas began scraping, where the one that began later lacks the other's first seconds,
    /// which this test's account of each replica (its outage) leaves out.
    pub fn checked(&self, windows: &[(i64, i64)]) -> bool {
        windows.iter().all(|&(from, _)| from >= self.began + holes::SCRAPE)
    }
}

/// A step's values, short enough for a message.
fn shown(values: Option<&std::collections::BTreeMap<String, String>>) -> String {
    let text = format!("{:?}", values.cloned().unwrap_or_default());
    if text.len() > 400 { format!("{}… ({} series)", &text[..400], values.map_or(0, |v| v.len())) } else { text }
}

/// What the range queries over both holes showed.
#[derive(Debug, Default)]
pub struct Tally {
    /// Steps compared.
    pub steps: usize,
    /// Steps whose window one replica holds and the other's is holed: where the choice shows.
    pub one_holds: usize,
    /// Steps whose window both replicas' holes reach.
    pub nobody_holds: usize,
    /// Steps not checked (see [`Timeline::checked`]).
    pub unchecked: usize,
    pub failures: Vec<String>,
}

impl Tally {
    pub fn add(mut self, other: Tally) -> Tally {
        self.steps += other.steps;
        self.one_holds += other.one_holds;
        self.nobody_holds += other.nobody_holds;
        self.unchecked += other.unchecked;
        self.failures.extend(other.failures);
        self
    }

    fn failed(failure: String) -> Tally {
        Tally { failures: vec![failure], ..Tally::default() }
    }
}

/// The shape as a range query over both holes, through mpp and directly at both replicas,
/// compared step by step.
pub async fn range_over_holes(mpp: &str, shape: &Shape, post: bool, timeline: &Timeline) -> Tally {
    let Timeline { start, end, a, b, .. } = timeline;
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
        if !timeline.checked(&windows) {
            tally.unchecked += 1;
            continue;
        }
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
pub async fn instant_in_hole(mpp: &str, shape: &Shape, time: i64, timeline: &Timeline) -> Tally {
    let windows: Vec<(i64, i64)> = shape.reads.iter().map(|r| r.at(time, time, time)).collect();
    if !timeline.checked(&windows) {
        return Tally { unchecked: 1, ..Tally::default() };
    }
    let holds = [&timeline.a, &timeline.b].map(|r| r.holds(&windows));
    let tally = Tally {
        steps: 1,
        one_holds: usize::from(holds.contains(&Holds::Whole) && holds.contains(&Holds::Holed)),
        nobody_holds: usize::from(holds == [Holds::Holed; 2]),
        ..Tally::default()
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

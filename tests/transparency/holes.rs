//! What the test knows of each replica's hole, and which replica therefore holds a step's
//! read window: worked out from when the test stopped and restarted it and from the samples
//! it stored, not from what mpp says.

use std::collections::BTreeMap;

use serde_json::Value;

/// A scrape interval of the replicas, milliseconds.
pub const SCRAPE: i64 = 1_000;

/// One replica as the checks see it.
#[derive(Debug, Clone)]
pub struct Replica {
    /// `A` or `B`, for messages.
    pub name: &'static str,
    pub url: String,
    /// Its hole (Unix milliseconds): from its last sample before the test stopped it to its
    /// first after it was ready again (Prometheus starts scraping up to 5 s after it is ready),
    /// as its samples of `up` show; exclusive at both ends.
    pub hole: (i64, i64),
    /// Other stretches between two consecutive samples further apart than a scrape and a half
    /// (a scrape delayed on a busy machine).
    pub gaps: Vec<(i64, i64)>,
}

/// Whether a replica holds a step's read window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// Every window lies clear of its hole widened by a scrape interval, and of every gap
    /// between its samples.
    Whole,
    /// Near its hole or a gap: it may hold the window or not.
    Unsure,
    /// A window spends a scrape and a half inside its hole, where a replica that scrapes every
    /// second has a sample and this one has none: its answer there lacks data.
    Holed,
}

/// The length of `[from, to]` inside `[start, end]`.
fn overlap((from, to): (i64, i64), (start, end): (i64, i64)) -> i64 {
    (to.min(end) - from.max(start)).max(0)
}

impl Replica {
    /// The replica whose hole is the gap in `gaps` around the time it was stopped (`down`)
    /// and restarted (`up`); the other gaps are kept as such.
    pub fn new(name: &'static str, url: String, (down, up): (i64, i64), mut gaps: Vec<(i64, i64)>) -> Replica {
        let around = |&(after, before): &(i64, i64)| after <= down + SCRAPE && before >= up;
        let hole = gaps.iter().copied().filter(around).fold((down, up), |(a, b), (c, d)| (a.min(c), b.max(d)));
        gaps.retain(|g| !around(g));
        Replica { name, url, hole, gaps }
    }

    /// Whether it holds all of `windows` (none: the query reads no data, held by all).
    pub fn holds(&self, windows: &[(i64, i64)]) -> Holds {
        if windows.iter().any(|&w| overlap(w, self.hole) >= SCRAPE * 3 / 2) {
            return Holds::Holed;
        }
        let widened = (self.hole.0 - SCRAPE, self.hole.1 + SCRAPE);
        let near = |&(from, to): &(i64, i64)| {
            [widened].iter().chain(&self.gaps).any(|&(after, before)| from < before && after < to)
        };
        if windows.iter().any(near) { Holds::Unsure } else { Holds::Whole }
    }

    /// Milliseconds of `windows` inside its hole.
    pub fn missing(&self, windows: &[(i64, i64)]) -> i64 {
        windows.iter().map(|&w| overlap(w, self.hole)).sum()
    }
}

/// The gaps between consecutive samples of any series in a matrix of raw samples (the
/// answer to an instant query of `up{…}[range]`).
pub fn gaps(raw: &Value) -> Vec<(i64, i64)> {
    let mut gaps = Vec::new();
    for series in raw["data"]["result"].as_array().into_iter().flatten() {
        let times: Vec<i64> = series["values"].as_array().into_iter().flatten().map(|p| millis(&p[0])).collect();
        gaps.extend(times.windows(2).filter(|w| w[1] - w[0] > SCRAPE * 3 / 2).map(|w| (w[0], w[1])));
    }
    gaps
}

/// A JSON timestamp (float seconds) as Unix milliseconds.
pub fn millis(time: &Value) -> i64 {
    (time.as_f64().unwrap_or(f64::NAN) * 1000.0).round() as i64
}

/// Each step's values in a matrix answer: step -> (labels -> value as written).
pub type Steps = BTreeMap<i64, BTreeMap<String, String>>;

/// The steps of a matrix answer, series by series.
pub fn steps(answer: &Value) -> Steps {
    let mut steps = Steps::new();
    for series in answer["data"]["result"].as_array().into_iter().flatten() {
        let labels = series["metric"].to_string();
        for point in series["values"].as_array().into_iter().flatten() {
            let value = point[1].as_str().unwrap_or("(not a string)").to_string();
            steps.entry(millis(&point[0])).or_default().insert(labels.clone(), value);
        }
    }
    steps
}

/// Whether a warning names step `t` (Unix milliseconds): as a time of its own or inside a
/// `… to …` range of RFC 3339 times. `None` when it names no time at all.
pub fn names_step(warning: &str, t: i64) -> Option<bool> {
    let words: Vec<&str> = warning.split([' ', ',', ';', '(', ')', '[', ']']).filter(|w| !w.is_empty()).collect();
    let time = |word: &str| -> Option<i64> {
        let parsed = humantime::parse_rfc3339_weak(word.trim_end_matches('Z')).ok()?;
        Some(parsed.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
    };
    let mut named_any = false;
    for (i, word) in words.iter().enumerate() {
        let Some(first) = time(word) else { continue };
        named_any = true;
        let last = match (words.get(i + 1), words.get(i + 2)) {
            (Some(&"to"), Some(next)) => time(next).unwrap_or(first),
            _ => first,
        };
        if (first..=last).contains(&t) {
            return Some(true);
        }
    }
    named_any.then_some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_names_steps_alone_and_in_ranges() {
        let warning = "mpp: these steps may be incomplete: 2026-12-03T08:00:00.000Z to 2026-12-03T08:00:05.000Z, \
                       2026-12-03T08:01:00.000Z";
        let at = |s: &str| {
            humantime::parse_rfc3339(s).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        };
        assert_eq!(names_step(warning, at("2026-12-03T08:00:03Z")), Some(true));
        assert_eq!(names_step(warning, at("2026-12-03T08:01:00Z")), Some(true));
        assert_eq!(names_step(warning, at("2026-12-03T08:00:30Z")), Some(false));
        assert_eq!(names_step("incomplete", 0), None);
    }
}

//! `/mpp/status`: one [`Status`] built from the facts and the snapshot, rendered as JSON or
//! as a self-contained HTML page (no scripts, no outside assets).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use maud::{DOCTYPE, PreEscaped, html};
use serde::Serialize;

use super::Facts;
use crate::coverage::Coverage;
use crate::selection::Snapshot;

/// Everything the status page shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub strategy: String,
    pub strategy_description: String,
    pub comparison_metric: &'static str,
    pub selection_interval: String,
    pub affinity_options: String,
    pub discovery: String,
    pub discovery_error: Option<String>,
    /// Parts of discovery's answer that went wrong (a DNS name that did not resolve).
    pub discovery_problems: Vec<String>,
    pub selection_round: u64,
    pub last_round_at: Option<String>,
    pub last_round_millis: u64,
    pub selection_reason: String,
    pub candidates: Vec<CandidateStatus>,
    /// The dashboard cache, when it is on.
    pub cache: Option<crate::cache::Summary>,
}

/// One candidate on the status page.
#[derive(Debug, Serialize)]
pub struct CandidateStatus {
    pub url: String,
    pub id: String,
    pub selected: bool,
    pub viable: bool,
    pub ready: bool,
    pub answers_up: bool,
    /// Seconds since the replica's process started, from its `process_start_time_seconds`.
    pub uptime_seconds: Option<u64>,
    /// The comparison value: samples ingested since it started.
    pub samples: Option<f64>,
    /// For `minimum-history`: whether it holds enough history.
    pub has_history: Option<bool>,
    pub last_probe_error: Option<String>,
    pub probe_millis: u64,
    /// Why it is out of the selection for its data (ingestion stalled or lagging), if it is.
    pub data_ejected: Option<String>,
    /// Which stretches of time it holds complete data for, once scanned.
    pub coverage: Option<CoverageStatus>,
}

/// One replica's coverage on the status page.
#[derive(Debug, Serialize)]
pub struct CoverageStatus {
    /// The share of the scanned range without holes.
    pub ratio: f64,
    /// The scanned range, Unix seconds.
    pub from: f64,
    pub to: f64,
    pub bucket_seconds: f64,
    /// Its holes, oldest first (Unix seconds); `open` when it was down and not asked since.
    pub holes: Vec<HoleStatus>,
}

/// One hole.
#[derive(Debug, Serialize)]
pub struct HoleStatus {
    pub start: f64,
    pub end: f64,
    pub open: bool,
}

impl CoverageStatus {
    fn new(coverage: &Coverage, now: f64) -> Option<Self> {
        if !coverage.known() {
            return None;
        }
        let seconds = |ms: i64| ms as f64 / 1000.0;
        let mut holes: Vec<HoleStatus> = coverage
            .holes()
            .iter()
            .map(|h| HoleStatus { start: seconds(h.start), end: seconds(h.end), open: false })
            .collect();
        if let Some(open) = coverage.open_from {
            holes.push(HoleStatus { start: seconds(open), end: now.max(seconds(open)), open: true });
        }
        Some(CoverageStatus {
            ratio: coverage.ratio(),
            from: seconds(coverage.from),
            to: seconds(coverage.to),
            bucket_seconds: seconds(coverage.bucket),
            holes,
        })
    }
}

impl Status {
    /// The status as of `snapshot`.
    pub fn new(facts: &Facts, snapshot: &Snapshot, cache: Option<crate::cache::Summary>) -> Self {
        let now = SystemTime::now();
        let unix_now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            started_at: humantime::format_rfc3339_seconds(facts.started).to_string(),
            uptime_seconds: now.duration_since(facts.started).unwrap_or_default().as_secs(),
            strategy: facts.strategy.to_string(),
            strategy_description: facts.strategy.description(),
            comparison_metric: facts.strategy.comparison(),
            selection_interval: crate::units::format_duration(facts.interval),
            affinity_options: facts.affinity.to_string(),
            discovery: facts.discovery.clone(),
            discovery_error: snapshot.discovery_error.clone(),
            discovery_problems: snapshot.discovery_problems.clone(),
            selection_round: snapshot.round,
            last_round_at: (snapshot.round > 0)
                .then(|| humantime::format_rfc3339_seconds(snapshot.taken_at).to_string()),
            last_round_millis: snapshot.round_took.as_millis() as u64,
            selection_reason: snapshot.reason.clone(),
            candidates: snapshot
                .candidates
                .iter()
                .map(|c| CandidateStatus {
                    url: c.replica.url().to_string(),
                    id: c.replica.id().to_string(),
                    selected: c.selected,
                    viable: c.probe.viable(),
                    ready: c.probe.ready,
                    answers_up: c.probe.answers_up,
                    uptime_seconds: c.probe.start_time.map(|s| (unix_now - s).max(0.0) as u64),
                    samples: c.probe.samples,
                    has_history: c.probe.has_history,
                    last_probe_error: c.probe.error.clone(),
                    probe_millis: c.probe.took.as_millis() as u64,
                    data_ejected: c.data.ejected.clone(),
                    coverage: CoverageStatus::new(&c.replica.coverage(), unix_now),
                })
                .collect(),
            cache,
        }
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let selected = self.candidates.iter().filter(|c| c.selected).count();
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    meta http-equiv="refresh" content="10";
                    title { "mpp: cluster status" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    h1 { "Multi-Prometheus Proxy" }
                    p.summary {
                        strong { (selected) " of " (self.candidates.len()) } " replicas selected"
                        " · " (self.selection_reason)
                    }
                    @if let Some(error) = &self.discovery_error {
                        p.error { "Discovery failed; serving from the last good set: " (error) }
                    }
                    @for problem in &self.discovery_problems {
                        p.error { "Discovery: " (problem) }
                    }
                    table.facts {
                        tr { th { "Version" } td { (self.version) } }
                        tr { th { "Uptime" } td { (duration(self.uptime_seconds)) " (since " (self.started_at) ")" } }
                        tr { th { "Strategy" } td { code { (self.strategy) } " — " (self.strategy_description) } }
                        tr { th { "Comparison metric" } td { (self.comparison_metric) } }
                        tr { th { "Selection interval" } td { (self.selection_interval) } }
                        tr { th { "Affinity" } td { (self.affinity_options) } }
                        tr { th { "Discovery" } td { (self.discovery) } }
                        tr {
                            th { "Last selection" }
                            td {
                                "round " (self.selection_round)
                                @if let Some(at) = &self.last_round_at { " at " (at) }
                                " (" (self.last_round_millis) " ms)"
                            }
                        }
                    }
                    h2 { "Candidates" }
                    table.candidates {
                        thead { tr {
                            th { "Replica" } th { "Selected" } th { "Viable" } th { "Uptime" }
                            th { "Samples ingested" } th { "History" } th { "Data" } th { "Last probe error" }
                        } }
                        tbody {
                            @for c in &self.candidates {
                                tr class=(if c.selected { "selected" } else if c.viable { "viable" } else { "down" }) {
                                    td { a href=(c.url) { (c.url) } }
                                    td { @if c.selected { "yes" } @else { "no" } }
                                    td { @if c.viable { "yes" } @else { "no" } }
                                    td { @match c.uptime_seconds { Some(s) => (duration(s)), None => "—" } }
                                    td.num { @match c.samples { Some(n) => (format!("{n:.0}")), None => "—" } }
                                    td { @match c.has_history { Some(true) => "enough", Some(false) => "too little", None => "—" } }
                                    td.err { @match &c.data_ejected { Some(why) => { "out: " (why) }, None => "" } }
                                    td.err { (c.last_probe_error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                    h2 { "Coverage" }
                    (self.coverage_html())
                    h2 { "Cache" }
                    (self.cache_html())
                    p.foot { "JSON: " code { "curl -H 'Accept: application/json' …/mpp/status" } " · metrics at " a href="/mpp/metrics" { "/mpp/metrics" } }
                }
            }
        }
        .into_string()
    }
}

impl Status {
    /// The dashboard cache: what it holds, how often it answers whole, its largest queries.
    fn cache_html(&self) -> maud::Markup {
        let Some(cache) = &self.cache else {
            return html! { p { "Off (" code { "--cache-max-bytes 0" } ")." } };
        };
        html! {
            table.facts {
                tr { th { "Queries held" } td { (cache.entries) } }
                tr { th { "Bytes held" } td { (crate::units::format_size(cache.bytes)) } }
                tr {
                    th { "Answered wholly from the cache" }
                    td { @match cache.hit_ratio { Some(r) => (format!("{:.1} % of lookups", r * 100.0)), None => "no lookup yet" } }
                }
            }
            @if !cache.largest.is_empty() {
                table.candidates {
                    thead { tr { th { "Largest queries" } th { "Path" } th { "Bytes" } } }
                    tbody {
                        @for (path, expr, bytes) in &cache.largest {
                            tr { td { code { (expr) } } td { (path) } td.num { (crate::units::format_size(*bytes)) } }
                        }
                    }
                }
            }
        }
    }

    /// Each replica's coverage as a timeline over the common scanned range: grey where it
    /// holds complete data, red where it has a hole (at least a pixel wide, so that a short
    /// hole in a long retention still shows), hatched where it was down and not asked since.
    fn coverage_html(&self) -> maud::Markup {
        const WIDTH: f64 = 720.0;
        let scanned: Vec<(&CandidateStatus, &CoverageStatus)> =
            self.candidates.iter().filter_map(|c| c.coverage.as_ref().map(|cov| (c, cov))).collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let Some(from) = scanned.iter().map(|(_, c)| c.from).reduce(f64::min) else {
            return html! { p { "Not scanned yet: coverage needs replicas that answer range queries for " code { "up" } "." } };
        };
        let to = now.max(from + 1.0);
        let x = |t: f64| ((t - from) / (to - from) * WIDTH).clamp(0.0, WIDTH);
        let time =
            |t: f64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0))).to_string();
        html! {
            p { "From " (time(from)) " to now; buckets of " (scanned[0].1.bucket_seconds) " s. Red: a hole (less data than its peers); hatched: down, not checked since; pale: not scanned yet." }
            table.coverage {
                @for (n, (candidate, coverage)) in scanned.iter().enumerate() {
                    tr {
                        td { (candidate.url) br; small { (coverage_summary(coverage)) } }
                        td {
                            svg xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height="22" role="img" {
                                title { (candidate.url) ": " (coverage.holes.len()) " holes" }
                                defs { pattern id=(format!("open{n}")) width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                                    rect width="3" height="6" fill="#c33" {}
                                } }
                                rect x=(x(coverage.from)) y="3" width=((x(coverage.to) - x(coverage.from)).max(1.0)) height="16" fill="#9bb" {}
                                @if coverage.to < to {
                                    rect x=(x(coverage.to)) y="3" width=(x(to) - x(coverage.to)) height="16" fill="#dde" {
                                        title { "not scanned yet: since " (time(coverage.to)) }
                                    }
                                }
                                @for hole in &coverage.holes {
                                    rect x=(x(hole.start)) y="3" width=((x(hole.end) - x(hole.start)).max(1.0)) height="16"
                                        fill=(if hole.open { format!("url(#open{n})") } else { "#c33".to_string() }) {
                                        title { (time(hole.start)) " – " (time(hole.end)) " (" (duration((hole.end - hole.start).max(0.0) as u64)) ")" }
                                    }
                                }
                            }
                            @if !coverage.holes.is_empty() {
                                br; small { "latest: " @for hole in coverage.holes.iter().rev().take(3) {
                                    (time(hole.start)) " for " (duration((hole.end - hole.start).max(0.0) as u64)) @if hole.open { " (open)" } "; "
                                } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// "99.981 % of 6h 40m complete · 1 hole": the share is of the scanned range, which is
/// named, so that a replica scanned for one bucket, a hole, reads as such and not as a
/// replica with no data at all.
fn coverage_summary(coverage: &CoverageStatus) -> String {
    let holes = coverage.holes.len();
    format!(
        "{:.3} % of {} complete · {holes} {}",
        coverage.ratio * 100.0,
        duration((coverage.to - coverage.from).max(0.0) as u64),
        if holes == 1 { "hole" } else { "holes" }
    )
}

fn duration(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fafafa}\
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.5em}\
table{border-collapse:collapse;background:#fff}th,td{padding:.35em .8em;border:1px solid #ddd;text-align:left;vertical-align:top}\
table.facts th{background:#f0f0f0;width:12em}table.candidates th{background:#e8eef7}\
tr.selected td{background:#e6f6e6}tr.down td{background:#fbeaea}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.err{color:#a00;max-width:40em;word-break:break-word}.error{color:#a00;font-weight:bold}.summary{font-size:1.1em}\
.foot{color:#666;font-size:.9em;margin-top:2em}table.coverage td{vertical-align:middle}svg{display:block}";

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(coverage: CoverageStatus) -> CandidateStatus {
        CandidateStatus {
            url: "http://replica-b:9090".to_string(),
            id: "b".to_string(),
            selected: true,
            viable: true,
            ready: true,
            answers_up: true,
            uptime_seconds: Some(30),
            samples: None,
            has_history: None,
            last_probe_error: None,
            probe_millis: 1,
            data_ejected: None,
            coverage: Some(coverage),
        }
    }

    fn status(candidates: Vec<CandidateStatus>) -> Status {
        Status {
            version: "test",
            started_at: String::new(),
            uptime_seconds: 0,
            strategy: String::new(),
            strategy_description: String::new(),
            comparison_metric: "",
            selection_interval: String::new(),
            affinity_options: String::new(),
            discovery: String::new(),
            discovery_error: None,
            discovery_problems: Vec::new(),
            selection_round: 0,
            last_round_at: None,
            last_round_millis: 0,
            selection_reason: String::new(),
            candidates,
            cache: None,
        }
    }

    /// A replica started after its peer, scanned for one bucket so far (a hole, since it was
    /// not there yet): the share names the range it is of, and the rest of the timeline up to
    /// now is drawn as not scanned, not as complete.
    #[test]
    fn a_replica_scanned_for_one_bucket_reads_as_such() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let (from, to) = (now - 60.0, now - 40.0);
        let coverage = CoverageStatus {
            ratio: 0.0,
            from,
            to,
            bucket_seconds: 20.0,
            holes: vec![HoleStatus { start: from, end: to, open: false }],
        };
        assert_eq!(coverage_summary(&coverage), "0.000 % of 20s complete · 1 hole");
        let page = status(vec![candidate(coverage)]).coverage_html().into_string();
        assert!(page.contains("0.000 % of 20s complete · 1 hole"), "{page}");
        assert!(page.contains("fill=\"#dde\"><title>not scanned yet: since "), "{page}");
        // Complete (grey) only over the scanned bucket: a third of the 60 s drawn.
        let grey = page.split("fill=\"#9bb\"").next().unwrap().rsplit("width=\"").next().unwrap();
        let width: f64 = grey.split('"').next().unwrap().parse().unwrap();
        assert!((width - 240.0).abs() < 1.0, "{width}: {page}");
    }

    #[test]
    fn a_replica_scanned_to_now_has_no_unscanned_stretch() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let coverage =
            CoverageStatus { ratio: 1.0, from: now - 7200.0, to: now + 60.0, bucket_seconds: 60.0, holes: vec![] };
        assert_eq!(coverage_summary(&coverage), "100.000 % of 2h 1m complete · 0 holes");
        let page = status(vec![candidate(coverage)]).coverage_html().into_string();
        assert!(!page.contains("<title>not scanned yet"), "{page}");
    }
}

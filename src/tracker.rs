//! The coverage tracker: the background task that builds each replica's [`Coverage`] from the
//! replicas' own data and keeps it current. It never delays the selection loop or a request:
//! it reads the published snapshot and writes each replica's coverage into the registry.
//!
//! - **Every hole a scan finds** is placed at scrape precision ([`crate::coverage::edges`]): one small
//!   query per hole edge, on the holed replica, for the last [`crate::coverage::MAX_HOLES`] holes of a scan.
//! - **At start-up** it scans everything: from the oldest sample any replica holds
//!   (`prometheus_tsdb_lowest_timestamp_seconds`, read by the probes) to now, one range query
//!   per replica per 10,000 buckets, `sum(count_over_time(up[<bucket>]))` with the bucket as
//!   step. mpp is restarted too, often long after a replica had its hole.
//! - **Each round** (every `--liveness-interval`) it asks again about the buckets completed
//!   since the last round, with two buckets of overlap.
//! - **From what is seen live:** a replica that is down (its probe or liveness check failed)
//!   gets an open hole from the end of what was last scanned, until it has been asked again;
//!   a replica whose `process_start_time_seconds` changed (it restarted between two checks)
//!   has its last [`RESCAN_ON_RESTART`] scanned again, since a restart can lose what its
//!   write-ahead log held; one that stops ingesting falls short of its peers in the next
//!   buckets.
//!
//! The bucket is four times the longest scrape interval among the replicas' active targets
//! (from `/api/v1/targets`), so a bucket holds four scrapes of every target, unless
//! `--coverage-bucket` says otherwise.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use serde::Deserialize;

use crate::coverage::edges::{self, Found, Samples};
use crate::coverage::{Coverage, MAX_HOLES, Millis, Span, best_counts, holes_in_buckets};
use crate::metrics::{BackendLabels, Metrics};
use crate::probe::{Prober, encode_query};
use crate::registry::Replica;
use crate::selection::Snapshot;

/// The most buckets asked for in one range query (Prometheus refuses more than 11,000 points
/// per series).
pub const BUCKETS_PER_QUERY: Millis = 10_000;
/// How far back a restarted replica is scanned again: Prometheus's head block, which a
/// restart replays from its write-ahead log, spans up to three hours.
pub const RESCAN_ON_RESTART: Duration = Duration::from_secs(3 * 3600);
/// How long one scan query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading a replica's targets or flags may take.
const SETTINGS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a failed read of a replica's targets or flags it is tried again.
const SETTINGS_RETRY: Duration = Duration::from_secs(30);
/// The furthest back the scan reaches, whatever a replica says its oldest sample is (a
/// sample stamped 1970 must not cost millions of queries).
const MAX_SCAN_BACK: Millis = 2 * 366 * 24 * 3600 * 1000;
/// Prometheus's default `--query.lookback-delta`, used until a replica's own is known.
pub const DEFAULT_LOOKBACK: Millis = 5 * 60 * 1000;
/// Scrapes per bucket: enough that one missed scrape shows as a shortfall (see
/// [`crate::coverage::COMPLETE_SHARE`]), few enough that holes are placed within a few scrapes.
const SCRAPES_PER_BUCKET: Millis = 4;

/// What the tracker remembers about a replica between rounds (keyed by URL).
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Its process start time when last seen, to notice restarts.
    start_time: Option<f64>,
    /// Its `--query.lookback-delta`, once read.
    lookback: Option<Millis>,
    /// The end of the last bucket it was asked about.
    scanned_to: Option<Millis>,
    /// When reading its lookback last failed.
    lookback_failed: Option<tokio::time::Instant>,
}

/// The coverage tracker; see the module documentation.
pub struct Tracker {
    prober: Prober,
    published: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    /// `--coverage-bucket`, if given.
    bucket_override: Option<Millis>,
    /// The longest scrape interval of the replicas' targets, once read.
    scrape_interval: Option<Millis>,
    /// When reading it last failed.
    scrape_interval_failed: Option<tokio::time::Instant>,
    seen: HashMap<String, Seen>,
}

impl Tracker {
    /// A tracker over the published selection, asking the replicas with `prober`'s client,
    /// credentials and `Via`.
    pub fn new(
        prober: Prober,
        published: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        bucket_override: Option<Duration>,
    ) -> Self {
        Tracker {
            prober,
            published,
            metrics,
            bucket_override: bucket_override.map(|b| b.as_millis().max(1) as Millis),
            scrape_interval: None,
            scrape_interval_failed: None,
            seen: HashMap::new(),
        }
    }

    /// Runs rounds every `interval`, forever; `first` hears when the first one is done.
    pub async fn run(mut self, interval: Duration, first: tokio::sync::oneshot::Sender<()>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        self.round().await;
        let _ = first.send(());
        loop {
            ticks.tick().await;
            self.round().await;
        }
    }

    /// One round: note replicas that are down, then ask the others about the buckets not yet
    /// scanned.
    pub async fn round(&mut self) {
        let snapshot = self.published.load_full();
        let now = now_millis();
        let mut up: Vec<(Arc<Replica>, Option<f64>, Option<f64>)> = Vec::new();
        for candidate in &snapshot.candidates {
            let replica = &candidate.replica;
            if candidate.probe.viable() && !replica.health().is_down() {
                up.push((replica.clone(), candidate.probe.start_time, candidate.probe.lowest_time));
            } else {
                self.note_down(replica);
            }
        }
        self.seen.retain(|url, _| snapshot.candidates.iter().any(|c| c.replica.url() == url));
        if up.is_empty() {
            return;
        }
        let Some(bucket) = self.bucket(&up).await else { return };
        self.read_lookbacks(&up).await;
        for (replica, start_time, _) in &up {
            let seen = self.seen.entry(replica.url().to_string()).or_default();
            let start_time = start_time.filter(|t| t.is_finite());
            if let (Some(before), Some(now_start)) = (seen.start_time, start_time)
                && before != now_start
            {
                tracing::info!(backend = %replica, "replica restarted; scanning its recent data again");
                let rescan_from = (now - RESCAN_ON_RESTART.as_millis() as Millis).div_euclid(bucket) * bucket;
                seen.scanned_to = seen.scanned_to.map(|to| to.min(rescan_from));
            }
            seen.start_time = start_time.or(seen.start_time);
        }
        // The oldest data any replica holds.
        let Some(earliest) = up
            .iter()
            .filter_map(|(_, _, lowest)| lowest.filter(|t| t.is_finite()))
            .map(|t| (t * 1000.0) as Millis)
            .min()
        else {
            return;
        };
        self.note_retention(&up, earliest, bucket);
        let scanned: Vec<Option<Millis>> =
            up.iter().map(|(r, _, _)| self.seen.get(r.url()).and_then(|s| s.scanned_to)).collect();
        let scrape = self.scrape_interval.unwrap_or(bucket / SCRAPES_PER_BUCKET);
        let Some(range) = scan_range(&scanned, earliest, now, bucket, scrape) else { return };
        let replicas: Vec<Arc<Replica>> = up.into_iter().map(|(r, _, _)| r).collect();
        self.scan(&replicas, range, bucket, scrape).await;
    }

    /// Asks every replica in `replicas` about `range` and publishes what is learned: a
    /// replica whose query fails keeps what was known (and its open hole). Each hole found is
    /// then placed at scrape precision (`scrape` being the longest scrape interval).
    async fn scan(&mut self, replicas: &[Arc<Replica>], range: Span, bucket: Millis, scrape: Millis) {
        let mut coverages: Vec<Option<Coverage>> =
            replicas.iter().map(|r| Some(Coverage::clone(&r.coverage()))).collect();
        let this = &*self;
        let mut start = range.start;
        while start < range.end {
            let end = (start + BUCKETS_PER_QUERY * bucket).min(range.end);
            let asked = replicas.iter().zip(&coverages).map(|(replica, coverage)| async move {
                match coverage {
                    Some(_) => Some(this.counts(replica, start, end, bucket).await),
                    None => None,
                }
            });
            let answers = join_all(asked).await;
            let mut counts = Vec::new();
            let mut answered = Vec::new();
            for (i, answer) in answers.into_iter().enumerate() {
                match answer {
                    Some(Ok(c)) => {
                        counts.push(c);
                        answered.push(i);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(backend = %replicas[i], error = %e, "coverage scan failed");
                        coverages[i] = None;
                    }
                    None => {}
                }
            }
            let best = best_counts(&counts);
            let found = holes_in_buckets(start, bucket, &counts);
            let placing = found.iter().zip(&answered).map(|(holes, &i)| {
                let found = holes.iter().map(|&hole| Found {
                    hole,
                    bucket,
                    scrape,
                    best: (
                        best[bucket_index(hole.start, start, bucket)],
                        best[bucket_index(hole.end - bucket, start, bucket)],
                    ),
                });
                this.place(&replicas[i], found.collect())
            });
            for (holes, &i) in join_all(placing).await.iter().zip(&answered) {
                if let Some(coverage) = coverages[i].as_mut() {
                    coverage.scanned(Span::new(start, end), holes);
                    if end < range.end {
                        // A long scan (a long retention, at start-up) shows as it goes.
                        coverage.bucket = bucket;
                        this.publish(&replicas[i], coverage.clone());
                    }
                }
            }
            start = end;
        }
        for (replica, coverage) in replicas.iter().zip(coverages) {
            let Some(mut coverage) = coverage else { continue };
            let seen = self.seen.entry(replica.url().to_string()).or_default();
            if coverage.open_from.take().is_some() {
                tracing::info!(backend = %replica, holes = coverage.holes().len(), "replica's data checked again after it was down");
            }
            coverage.bucket = bucket;
            coverage.lookback = seen.lookback.unwrap_or(DEFAULT_LOOKBACK);
            seen.scanned_to = Some(range.end);
            self.publish(replica, coverage);
        }
    }

    /// `found`'s holes in `replica`'s data, each edge placed on the replica's own samples of
    /// `up` around it ([`edges`]): one read for a hole of up to two buckets, one per edge for
    /// a longer one, of the last [`MAX_HOLES`] holes only (more would be joined anyway). A
    /// read that fails leaves its edges on the buckets.
    async fn place(&self, replica: &Replica, found: Vec<Found>) -> Vec<Span> {
        let unplaced = found.len().saturating_sub(MAX_HOLES);
        let mut holes: Vec<Span> = found[..unplaced].iter().map(|f| f.hole).collect();
        for found in &found[unplaced..] {
            let (before, after) = edge_windows(found.hole, found.bucket, now_millis() - found.scrape);
            let read = async {
                let before = self.samples(replica, before).await?;
                let after = match after {
                    Some(after) => self.samples(replica, after).await?,
                    None => before.clone(),
                };
                Ok::<_, String>((before, after))
            }
            .await;
            match read {
                Ok((before, after)) => holes.push(edges::refine(found, &before, &after)),
                Err(e) => {
                    tracing::debug!(backend = %replica, error = %e, "cannot read the samples around a hole");
                    holes.push(found.hole);
                }
            }
        }
        holes
    }

    /// `replica`'s samples of `up` within `window`.
    async fn samples(&self, replica: &Replica, window: Span) -> Result<Samples, String> {
        self.metrics.coverage_queries.inc();
        let query = format!("up[{}ms]", (window.end - window.start).max(1));
        let path = format!("/api/v1/query?query={}&time={}", encode_query(&query), seconds(window.end));
        let body = tokio::time::timeout(QUERY_TIMEOUT, self.prober.get(replica, &path))
            .await
            .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))??;
        Ok(Samples { window, series: sample_times(&body, window)? })
    }

    /// A replica whose oldest sample is later than another's lacks what lies between, even
    /// where it was scanned before its retention deleted it.
    fn note_retention(&self, up: &[(Arc<Replica>, Option<f64>, Option<f64>)], earliest: Millis, bucket: Millis) {
        for (replica, _, lowest) in up {
            let Some(own) = lowest.filter(|t| t.is_finite()).map(|t| (t * 1000.0) as Millis) else { continue };
            let coverage = replica.coverage();
            if !coverage.known() || own <= earliest + bucket || coverage.missing(earliest, own - 1) >= own - earliest {
                continue;
            }
            let mut coverage = Coverage::clone(&coverage);
            let gone = Span::new(earliest, own.div_euclid(bucket) * bucket + bucket);
            coverage.scanned(gone, &[gone]);
            self.publish(replica, coverage);
        }
    }

    /// A replica found down: from the end of what was scanned, its data is in doubt.
    fn note_down(&self, replica: &Replica) {
        let coverage = replica.coverage();
        if coverage.known() && coverage.open_from.is_none() {
            let mut coverage = Coverage::clone(&coverage);
            coverage.open_from = Some(coverage.to);
            self.publish(replica, coverage);
        }
    }

    fn publish(&self, replica: &Replica, coverage: Coverage) {
        let labels = BackendLabels { backend: replica.url_label() };
        self.metrics.coverage_ratio.get_or_create(&labels).set(coverage.ratio());
        let holes = coverage.holes().len() + usize::from(coverage.open_from.is_some());
        self.metrics.coverage_holes.get_or_create(&labels).set(holes as i64);
        replica.set_coverage(coverage);
    }

    /// The bucket size: the override, or four times the longest scrape interval of the
    /// first replica that lists its targets.
    async fn bucket(&mut self, up: &[(Arc<Replica>, Option<f64>, Option<f64>)]) -> Option<Millis> {
        let retry_due = self.scrape_interval_failed.is_none_or(|at| at.elapsed() >= SETTINGS_RETRY);
        if self.scrape_interval.is_none() && retry_due {
            for (replica, _, _) in up {
                match self.settings(replica, "/api/v1/targets?state=active").await.and_then(|b| scrape_interval(&b)) {
                    Ok(Some(interval)) => {
                        self.scrape_interval = Some(interval);
                        break;
                    }
                    Ok(None) => tracing::debug!(backend = %replica, "no active targets: no scrape interval"),
                    Err(e) => tracing::debug!(backend = %replica, error = %e, "cannot read the scrape interval"),
                }
            }
            if self.scrape_interval.is_none() {
                self.scrape_interval_failed = Some(tokio::time::Instant::now());
            }
        }
        self.bucket_override.or(self.scrape_interval.map(|i| i * SCRAPES_PER_BUCKET))
    }

    /// Reads each replica's `--query.lookback-delta` once.
    async fn read_lookbacks(&mut self, up: &[(Arc<Replica>, Option<f64>, Option<f64>)]) {
        for (replica, _, _) in up {
            let seen = self.seen.get(replica.url()).cloned().unwrap_or_default();
            let retry_due = seen.lookback_failed.is_none_or(|at| at.elapsed() >= SETTINGS_RETRY);
            if seen.lookback.is_some() || !retry_due {
                continue;
            }
            let read = self.settings(replica, "/api/v1/status/flags").await.and_then(|b| lookback(&b));
            let seen = self.seen.entry(replica.url().to_string()).or_default();
            match read {
                Ok(lookback) => seen.lookback = Some(lookback),
                Err(e) => {
                    tracing::debug!(backend = %replica, error = %e, "cannot read the lookback delta");
                    seen.lookback_failed = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    /// A replica's settings page (targets, flags), within [`SETTINGS_TIMEOUT`].
    async fn settings(&self, replica: &Replica, path: &str) -> Result<bytes::Bytes, String> {
        tokio::time::timeout(SETTINGS_TIMEOUT, self.prober.get(replica, path))
            .await
            .map_err(|_| format!("GET {path}: no answer within {SETTINGS_TIMEOUT:?}"))?
    }

    /// Samples of `up` per bucket in `[start, end)`.
    async fn counts(&self, replica: &Replica, start: Millis, end: Millis, bucket: Millis) -> Result<Vec<f64>, String> {
        self.metrics.coverage_queries.inc();
        let query = format!("sum(count_over_time(up[{bucket}ms]))");
        // `count_over_time(x[b])` at t counts (t - b, t]: bucket i is evaluated at its end.
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step={}",
            encode_query(&query),
            seconds(start + bucket),
            seconds(end),
            seconds(bucket)
        );
        let body = tokio::time::timeout(QUERY_TIMEOUT, self.prober.get(replica, &path))
            .await
            .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))??;
        bucket_counts(&body, start, end, bucket)
    }
}

/// What a round scans: from the oldest end of what the replicas were asked about (the
/// oldest sample any holds, `earliest`, for one never asked; never more than two years
/// back), less two buckets of overlap, to the last complete bucket (one whose end every
/// replica has had a scrape interval to ingest). `None` when no bucket has completed since.
pub fn scan_range(
    scanned_to: &[Option<Millis>],
    earliest: Millis,
    now: Millis,
    bucket: Millis,
    scrape: Millis,
) -> Option<Span> {
    let earliest = earliest.max(now.saturating_sub(MAX_SCAN_BACK)).div_euclid(bucket) * bucket;
    let to = now.saturating_sub(scrape).div_euclid(bucket) * bucket;
    let oldest = scanned_to.iter().map(|t| t.unwrap_or(earliest)).min()?;
    if oldest >= to {
        return None;
    }
    let from = oldest.saturating_sub(2 * bucket).max(earliest);
    (from < to).then(|| Span::new(from, to))
}

fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as Millis
}

fn seconds(millis: Millis) -> String {
    format!("{}.{:03}", millis.div_euclid(1000), millis.rem_euclid(1000))
}

/// Reads `sum(count_over_time(up[b]))` over `[start, end)` into one count per bucket.
fn bucket_counts(body: &[u8], start: Millis, end: Millis, bucket: Millis) -> Result<Vec<f64>, String> {
    #[derive(Deserialize)]
    struct Data {
        result: Vec<Series>,
    }
    #[derive(Deserialize)]
    struct Series {
        values: Vec<(f64, String)>,
    }
    let data: Option<Data> = answer_data(body, "a range query answer")?;
    let buckets = ((end - start) / bucket).max(0) as usize;
    let mut counts = vec![0.0; buckets];
    for series in data.map(|d| d.result).unwrap_or_default() {
        for (at, value) in series.values {
            let index = ((at * 1000.0).round() as Millis).saturating_sub(start) / bucket - 1;
            if let (Ok(i), Ok(v)) = (usize::try_from(index), value.parse::<f64>())
                && i < buckets
            {
                counts[i] += v;
            }
        }
    }
    Ok(counts)
}

/// Where a hole's samples are read: around its start, and around its end unless that is the
/// same read (a hole of up to two buckets). Each reaches a bucket outside the hole and two
/// inside it (so that a series' interval shows on both sides of a short gap), and no later than
/// `ingested`, where every scrape has had time to be written (one not yet written is not a
/// missing one).
fn edge_windows(hole: Span, bucket: Millis, ingested: Millis) -> (Span, Option<Span>) {
    let window = |start: Millis, end: Millis| Span::new(start, end.min(ingested));
    if hole.end - hole.start <= 2 * bucket {
        return (window(hole.start - bucket, hole.end + bucket), None);
    }
    (window(hole.start - bucket, hole.start + 2 * bucket), Some(window(hole.end - 2 * bucket, hole.end + bucket)))
}

/// The `data` of a Prometheus API answer (`what` it should be), or the error it reports.
fn answer_data<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<Option<T>, String> {
    #[derive(Deserialize)]
    struct Answer<T> {
        status: String,
        error: Option<String>,
        data: Option<T>,
    }
    let answer: Answer<T> = serde_json::from_slice(body).map_err(|e| format!("not {what}: {e}"))?;
    if answer.status != "success" {
        return Err(answer.error.unwrap_or(answer.status));
    }
    Ok(answer.data)
}

/// The index of the bucket that starts at `at` in buckets of `bucket` from `first`.
fn bucket_index(at: Millis, first: Millis, bucket: Millis) -> usize {
    usize::try_from((at - first) / bucket).unwrap_or(0)
}

/// Reads a range selector's answer into each series' sample times within `window`, ascending.
fn sample_times(body: &[u8], window: Span) -> Result<Vec<Vec<Millis>>, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        result_type: String,
        result: Vec<Series>,
    }
    #[derive(Deserialize)]
    struct Series {
        #[serde(default)]
        values: Vec<(f64, serde::de::IgnoredAny)>,
    }
    let data: Data = answer_data(body, "a query answer")?.ok_or("a query answer without data")?;
    if data.result_type != "matrix" {
        return Err(format!("a {} where a range selector's matrix was expected", data.result_type));
    }
    Ok(data
        .result
        .into_iter()
        .map(|series| {
            let mut times: Vec<Millis> = series
                .values
                .iter()
                .map(|(at, _)| (at * 1000.0).round() as Millis)
                .filter(|t| (window.start..=window.end).contains(t))
                .collect();
            times.sort_unstable();
            times
        })
        .filter(|times| !times.is_empty())
        .collect())
}

/// The longest `scrapeInterval` among `/api/v1/targets`' active targets.
fn scrape_interval(body: &[u8]) -> Result<Option<Millis>, String> {
    #[derive(Deserialize)]
    struct Answer {
        data: Data,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        active_targets: Vec<Target>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Target {
        scrape_interval: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not a targets answer: {e}"))?;
    Ok(answer
        .data
        .active_targets
        .iter()
        .filter_map(|t| t.scrape_interval.as_deref())
        .filter_map(|i| crate::units::parse_duration(i).ok())
        .map(|d| d.as_millis() as Millis)
        .filter(|&ms| ms > 0)
        .max())
}

/// `query.lookback-delta` from `/api/v1/status/flags`.
fn lookback(body: &[u8]) -> Result<Millis, String> {
    #[derive(Deserialize)]
    struct Answer {
        data: HashMap<String, String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not a flags answer: {e}"))?;
    let value = answer.data.get("query.lookback-delta").ok_or("no query.lookback-delta flag")?;
    crate::units::parse_duration(value).map(|d| d.as_millis() as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bucket_counts_at_each_buckets_end() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[4,"40"],[12,"25"],[16.000,"41"],[99,"1"]]}]}}"#;
        assert_eq!(bucket_counts(body, 0, 16_000, 4000).unwrap(), vec![40.0, 0.0, 25.0, 41.0]);
        assert!(bucket_counts(br#"{"status":"error","error":"bad"}"#, 0, 4000, 4000).unwrap_err().contains("bad"));
        assert!(bucket_counts(b"<html>", 0, 4000, 4000).is_err());
        assert_eq!(seconds(-1), "-1.999");
        assert_eq!(seconds(1_700_000_000_123), "1700000000.123");
    }

    #[test]
    fn a_short_hole_is_read_once_a_long_one_at_each_edge_never_past_what_is_ingested() {
        let bucket = 4000;
        assert_eq!(edge_windows(Span::new(40_000, 48_000), bucket, 100_000), (Span::new(36_000, 52_000), None));
        assert_eq!(
            edge_windows(Span::new(40_000, 60_000), bucket, 100_000),
            (Span::new(36_000, 48_000), Some(Span::new(52_000, 64_000)))
        );
        assert_eq!(edge_windows(Span::new(40_000, 44_000), bucket, 45_000), (Span::new(36_000, 45_000), None));
    }

    #[test]
    fn reads_each_series_sample_times_within_the_window() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"job":"a"},"values":[[10.5,"1"],[9.5,"0"],[11.500,"1"],[30,"1"]]},
            {"metric":{"job":"b"},"values":[[1,"1"]]}]}}"#;
        assert_eq!(sample_times(body, Span::new(9000, 12_000)).unwrap(), vec![vec![9500, 10_500, 11_500]]);
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(sample_times(vector, Span::new(0, 1)).unwrap_err().contains("vector"));
        assert!(sample_times(br#"{"status":"error","error":"bad"}"#, Span::new(0, 1)).unwrap_err().contains("bad"));
        assert!(sample_times(b"<html>", Span::new(0, 1)).is_err());
    }

    #[test]
    fn a_round_scans_what_is_new_with_an_overlap_and_nothing_when_nothing_is() {
        let (bucket, scrape) = (4000, 1000);
        // Never asked: from the oldest sample, to the last complete bucket.
        assert_eq!(scan_range(&[None, None], 10_500, 100_700, bucket, scrape), Some(Span::new(8000, 96_000)));
        // Asked up to the last complete bucket: nothing until the next completes.
        assert_eq!(scan_range(&[Some(96_000), Some(96_000)], 8000, 100_900, bucket, scrape), None);
        assert_eq!(
            scan_range(&[Some(96_000), Some(96_000)], 8000, 101_000, bucket, scrape),
            Some(Span::new(88_000, 100_000))
        );
        // A replica that was down (asked up to 40 s) takes the scan back to it, for everyone.
        assert_eq!(
            scan_range(&[Some(96_000), Some(40_000)], 8000, 101_000, bucket, scrape),
            Some(Span::new(32_000, 100_000))
        );
        // A new replica among known ones: everything again.
        assert_eq!(scan_range(&[Some(96_000), None], 8000, 101_000, bucket, scrape), Some(Span::new(8000, 100_000)));
        // A sample stamped 1970 does not cost decades of queries.
        let now = 1_800_000_000_000;
        let range = scan_range(&[None], 0, now, 60_000, 15_000).unwrap();
        assert!(now - range.start <= MAX_SCAN_BACK + 60_000, "{range:?}");
        assert_eq!(scan_range(&[], 0, now, 60_000, 15_000), None, "no replica, no scan");
        assert_eq!(scan_range(&[None], now + 1, now, 60_000, 15_000), None, "data only in the future");
    }

    #[test]
    fn reads_the_longest_scrape_interval_and_the_lookback() {
        let targets = br#"{"status":"success","data":{"activeTargets":[{"scrapeInterval":"15s"},{"scrapeInterval":"1m"},{}],"droppedTargets":[]}}"#;
        assert_eq!(scrape_interval(targets).unwrap(), Some(60_000));
        assert_eq!(scrape_interval(br#"{"data":{"activeTargets":[]}}"#).unwrap(), None);
        assert_eq!(lookback(br#"{"status":"success","data":{"query.lookback-delta":"3s"}}"#).unwrap(), 3000);
        assert!(lookback(br#"{"status":"success","data":{}}"#).is_err());
    }
}

//! Hole edges at scrape precision. [`holes_in_buckets`](super::holes_in_buckets) finds holes
//! per bucket of a few scrape intervals, so a hole it finds may reach most of a bucket into
//! time its replica held, and a query whose window lies there is sliced or merged although one
//! replica had it whole. The tracker reads the holed replica's own samples of `up` around each
//! edge of such a hole (one small query per edge), and [`refine`] places the edge on them.
//!
//! What counts as held: a replica holds a stretch when none of its scrapes is missing from it.
//! A scrape is missing where two samples of a series lie further apart than [`GAP`] of the
//! series' interval. Up to the last sample before that gap, and from the first sample after
//! it, the replica's data is what it would have been without the gap, so the hole is
//! `[last + 1 ms, first)`: a query evaluated at `last` reads nothing missing, and one whose
//! window starts at `first` reads nothing missing either. The first missing scrape is only
//! due an interval after `last`, but the interval is estimated and a late scrape moves it, so
//! the hole starts just after the sample: wide by less than one interval, never narrow.
//! Across a replica's series the hole is the union of their gaps: from the earliest last
//! sample to the latest first sample.
//!
//! The edge stays where the bucket put it whenever the samples do not say, since a hole too
//! narrow shows on a dashboard and one too wide costs only a slice: no series has a gap
//! reaching into the hole (or none was read: the query failed), a gap reaching into it runs
//! past the samples read, the edge would land outside the hole's edge bucket, or the
//! replica's series, each counted at its interval, fall short of the best replica's count in
//! that bucket (then it lacks whole series, whose absence none of its own samples shows).

use super::{COMPLETE_SHARE, Millis, Span};

/// Samples further apart than this many intervals have a missed scrape between them: a
/// scrape delayed on a busy machine is less than half an interval late, and a missed one
/// leaves a whole interval more.
pub const GAP: f64 = 1.5;

/// A replica's samples of `up` around a hole's edge, as a range selector read them.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// The stretch they were read from: every sample of the replica's in it is given.
    pub window: Span,
    /// Each series' sample times, ascending.
    pub series: Vec<Vec<Millis>>,
}

/// A hole as the bucket scan found it, with what the scan knew around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// The hole: whole buckets.
    pub hole: Span,
    /// The bucket size.
    pub bucket: Millis,
    /// The longest scrape interval among the targets: no series is taken to be scraped less
    /// often.
    pub scrape: Millis,
    /// The best replica's sample count in the hole's first bucket and in its last.
    pub best: (f64, f64),
}

/// `found`'s hole with its start placed on `before` (samples read around the start) and its
/// end on `after` (read around the end; the same samples for a short hole). Each edge the
/// samples do not place stays where the bucket put it.
pub fn refine(found: &Found, before: &Samples, after: &Samples) -> Span {
    let start = refined_start(found, before).unwrap_or(found.hole.start);
    let end = refined_end(found, after).unwrap_or(found.hole.end);
    // Edges from two reads that cross cannot both be right; the bucket's hole is.
    if start < end { Span::new(start, end) } else { found.hole }
}

/// One millisecond after the earliest last sample before a gap reaching into the hole.
fn refined_start(found: &Found, samples: &Samples) -> Option<Millis> {
    let first_bucket = Span::new(found.hole.start, found.hole.start.saturating_add(found.bucket));
    if !fills(samples, first_bucket, found.scrape, found.best.0) {
        return None;
    }
    let mut earliest: Option<Millis> = None;
    for times in &samples.series {
        let gap = gaps(times, samples.window, interval(times, found.scrape)).find(|g| g.reaches_into(found.hole));
        if let Some(gap) = gap {
            let last = gap.last?;
            earliest = Some(earliest.map_or(last, |e| e.min(last)));
        }
    }
    let start = earliest?.saturating_add(1);
    (start <= found.hole.start.saturating_add(found.bucket)).then_some(start)
}

/// The latest first sample after a gap reaching into the hole.
fn refined_end(found: &Found, samples: &Samples) -> Option<Millis> {
    let last_bucket = Span::new(found.hole.end.saturating_sub(found.bucket), found.hole.end);
    if !fills(samples, last_bucket, found.scrape, found.best.1) {
        return None;
    }
    let mut latest: Option<Millis> = None;
    for times in &samples.series {
        let gap =
            gaps(times, samples.window, interval(times, found.scrape)).filter(|g| g.reaches_into(found.hole)).last();
        if let Some(gap) = gap {
            let first = gap.first?;
            latest = Some(latest.map_or(first, |l| l.max(first)));
        }
    }
    let end = latest?;
    (end >= found.hole.end.saturating_sub(found.bucket)).then_some(end)
}

/// Whether the replica's series, each on its own scrape grid, make up `best` samples in
/// `bucket`; if not, it lacks series the best replica has. A series is counted the way the
/// scan counted the best replica: every time of its grid in the bucket, both ends included
/// (Prometheus 2's range selectors are closed: a series scraped on the bucket's edges has a
/// sample more in it than the bucket holds intervals).
fn fills(samples: &Samples, bucket: Span, scrape: Millis, best: f64) -> bool {
    let expected: f64 = samples.series.iter().map(|times| on_grid(times, interval(times, scrape), bucket)).sum();
    expected >= best * COMPLETE_SHARE
}

/// How many times of the grid through `times[0]` every `interval` lie in `[bucket.start,
/// bucket.end]`.
fn on_grid(times: &[Millis], interval: Millis, bucket: Span) -> f64 {
    let Some(&phase) = times.first() else { return 0.0 };
    let first = (bucket.start.saturating_sub(phase) as f64 / interval as f64).ceil();
    let last = (bucket.end.saturating_sub(phase) as f64 / interval as f64).floor();
    (last - first + 1.0).max(0.0)
}

/// A series' scrape interval: the median step between its samples (a late scrape or a gap
/// does not move it), at most `scrape`; `scrape` for a series with a single sample.
fn interval(times: &[Millis], scrape: Millis) -> Millis {
    let mut steps: Vec<Millis> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
    steps.sort_unstable();
    steps.get(steps.len() / 2).copied().unwrap_or(scrape).min(scrape).max(1)
}

/// A stretch of one series with a scrape missing: between its `last` sample before and its
/// `first` after, each `None` where the stretch runs past the window read.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Gap {
    last: Option<Millis>,
    first: Option<Millis>,
}

impl Gap {
    /// Whether some of the time between its samples lies in `hole`.
    fn reaches_into(&self, hole: Span) -> bool {
        self.last.is_none_or(|last| last < hole.end) && self.first.is_none_or(|first| first > hole.start)
    }
}

/// The gaps of one series (times ascending, within `window`), oldest first.
fn gaps(times: &[Millis], window: Span, interval: Millis) -> impl Iterator<Item = Gap> + '_ {
    let long = move |from: Millis, to: Millis| to.saturating_sub(from) as f64 > GAP * interval as f64;
    let leading =
        times.first().filter(|&&first| long(window.start, first)).map(|&first| Gap { last: None, first: Some(first) });
    let inner = times.windows(2).filter(move |w| long(w[0], w[1])).map(|w| Gap { last: Some(w[0]), first: Some(w[1]) });
    let trailing =
        times.last().filter(|&&last| long(last, window.end)).map(|&last| Gap { last: Some(last), first: None });
    leading.into_iter().chain(inner).chain(trailing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Millis = 1000;
    const BUCKET: Millis = 4 * SECOND;

    /// A hole of whole buckets from `start` to `end`, scraped every second, the best replica
    /// with one series' four samples per bucket.
    fn found(start: Millis, end: Millis) -> Found {
        Found { hole: Span::new(start, end), bucket: BUCKET, scrape: SECOND, best: (4.0, 4.0) }
    }

    /// A series scraped every second at `phase` within `window`, except in `[down, up)`.
    fn series(window: Span, phase: Millis, down: Millis, up: Millis) -> Vec<Millis> {
        (0..)
            .map(|k| window.start + phase + k * SECOND)
            .take_while(|&t| t <= window.end)
            .filter(|&t| t < down || t >= up)
            .collect()
    }

    fn samples(window: Span, series: Vec<Vec<Millis>>) -> Samples {
        Samples { window, series }
    }

    /// The bucket hole from 40 s to 48 s placed on one series read from 36 s to 52 s.
    fn placed_on_one_series(phase: Millis, down: Millis, up: Millis) -> Span {
        let window = Span::new(36_000, 52_000);
        let around = samples(window, vec![series(window, phase, down, up)]);
        refine(&found(40_000, 48_000), &around, &around)
    }

    #[test]
    fn a_hole_runs_from_just_after_the_last_sample_to_the_first() {
        // Down from 41.5 s to 46.2 s: the last sample is at 41.3 s, the next at 46.3 s; the
        // buckets made it 40 s to 48 s.
        assert_eq!(placed_on_one_series(300, 41_500, 46_200), Span::new(41_301, 46_300));
    }

    #[test]
    fn across_series_the_earliest_last_sample_and_the_latest_first_one() {
        let window = Span::new(36_000, 52_000);
        let around = samples(
            window,
            vec![
                series(window, 100, 41_500, 46_200),
                series(window, 900, 41_500, 46_200),
                series(window, 500, 42_000, 47_000),
            ],
        );
        // Last samples at 41.1 s, 40.9 s and 41.5 s; first ones at 46.1 s, 46.9 s and 47.5 s.
        let found = Found { best: (12.0, 12.0), ..found(40_000, 48_000) };
        assert_eq!(refine(&found, &around, &around), Span::new(40_901, 47_500));
    }

    #[test]
    fn a_long_hole_is_placed_from_two_reads() {
        let before = Span::new(36_000, 48_000);
        let after = Span::new(92_000, 104_000);
        let found = found(40_000, 100_000);
        let placed = refine(
            &found,
            &samples(before, vec![series(before, 700, 42_000, i64::MAX)]),
            &samples(after, vec![series(after, 700, 0, 97_500)]),
        );
        assert_eq!(placed, Span::new(41_701, 97_700));
    }

    #[test]
    fn a_gap_begun_in_the_bucket_before_widens_the_hole() {
        // The bucket before was judged whole (three samples of four is short of 0.875 only
        // for one series; with eight it is not), yet this series' gap began in it.
        assert_eq!(placed_on_one_series(200, 39_500, 45_000), Span::new(39_201, 45_200));
    }

    #[test]
    fn a_late_scrape_is_no_gap() {
        let window = Span::new(36_000, 52_000);
        let mut times = series(window, 300, 41_500, 46_200);
        // The scrape due at 39.3 s ran at 39.7 s on a busy machine.
        let late = times.iter().position(|&t| t == 39_300).unwrap();
        times[late] = 39_700;
        let around = samples(window, vec![times]);
        assert_eq!(refine(&found(40_000, 48_000), &around, &around), Span::new(41_301, 46_300));
    }

    #[test]
    fn edges_the_samples_do_not_place_stay_on_the_buckets() {
        let hole = found(40_000, 48_000);
        let window = Span::new(36_000, 52_000);
        // Nothing read (the query failed), or no gap at all.
        let nothing = samples(window, Vec::new());
        assert_eq!(refine(&hole, &nothing, &nothing), hole.hole);
        assert_eq!(placed_on_one_series(300, 0, 0), hole.hole);
        // Still down at the end of what was read: the start is placed, the end is not.
        assert_eq!(placed_on_one_series(300, 41_500, i64::MAX), Span::new(41_301, 48_000));
        // Down since before what was read: the end is placed, the start is not.
        assert_eq!(placed_on_one_series(300, 0, 46_200), Span::new(40_000, 46_300));
        // Another series still down at the end: the latest first sample is not known.
        let one_still_down =
            samples(window, vec![series(window, 300, 41_500, 46_200), series(window, 600, 41_500, i64::MAX)]);
        let two = Found { best: (8.0, 8.0), ..hole };
        assert_eq!(refine(&two, &one_still_down, &one_still_down), Span::new(40_601, 48_000));
    }

    #[test]
    fn series_scraped_on_the_buckets_edges_are_placed_too() {
        // Scraped every 15 s on the minute: Prometheus 2 counts five samples in a bucket of a
        // minute (both ends), and the replica lacks those from 40 s to 100 s (the samples at
        // 45 s up to 90 s): the buckets made its hole 0 s to 120 s.
        let found =
            Found { hole: Span::new(0, 120 * SECOND), bucket: 60 * SECOND, scrape: 15 * SECOND, best: (5.0, 5.0) };
        let window = Span::new(-60 * SECOND, 180 * SECOND);
        let times: Vec<Millis> =
            (-4..=12).map(|k| k * 15 * SECOND).filter(|&t| !(45_000..=90_000).contains(&t)).collect();
        let around = samples(window, vec![times]);
        assert_eq!(refine(&found, &around, &around), Span::new(30 * SECOND + 1, 105 * SECOND));
    }

    #[test]
    fn a_replica_lacking_a_series_keeps_the_buckets_hole() {
        // The best replica scrapes two targets; this one only one, which had a short gap of
        // its own: its samples cannot show where the other target's are missing.
        let window = Span::new(36_000, 52_000);
        let around = samples(window, vec![series(window, 300, 43_000, 45_000)]);
        let found = Found { best: (8.0, 8.0), ..found(40_000, 48_000) };
        assert_eq!(refine(&found, &around, &around), found.hole);
    }

    #[test]
    fn an_edge_outside_the_holes_edge_bucket_is_not_believed() {
        // The first bucket was short, yet the only gap the samples show is in the second.
        let window = Span::new(36_000, 56_000);
        let around = samples(window, vec![series(window, 300, 44_500, 51_000)]);
        let found = found(40_000, 52_000);
        assert_eq!(refine(&found, &around, &around).start, 40_000);
    }

    #[test]
    fn intervals_are_the_median_step_at_most_the_scrape_interval() {
        assert_eq!(interval(&[0, 1000, 2000, 7000, 8000], 5000), 1000);
        assert_eq!(interval(&[0, 9000], 5000), 5000);
        assert_eq!(interval(&[0], 5000), 5000);
        assert_eq!(interval(&[5, 5, 5], 5000), 1, "never zero");
        let times = [Millis::MIN, Millis::MAX];
        assert_eq!(gaps(&times, Span::new(Millis::MIN, Millis::MAX), 1).count(), 1, "no overflow");
    }
}

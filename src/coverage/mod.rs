//! Coverage: which stretches of time each replica holds complete data for, compared with its
//! peers. Replicas exist so that one replica's hole (a restart, a crash, a frozen disk, a
//! replica cut off from its targets) never shows on a dashboard; the request path uses this
//! map to send a query to a replica with no hole in the window of data the query reads, and
//! to merge answers only when no single replica has that whole window.
//!
//! A replica's [`Coverage`] is a bounded list of *holes* ([`Span`]s it lacks data for) over
//! the range the [`tracker`](crate::tracker) has scanned, plus an open-ended hole from the moment it was last
//! seen down until the tracker has asked it again. It lives in the replica's registry entry
//! (an `ArcSwap`, replaced whole by the tracker), so the request path reads it without locks.
//!
//! Holes are found per *bucket*, a stretch of a few scrape intervals: the tracker counts each
//! replica's samples of `up` per bucket and compares them with the best count among the
//! replicas ([`holes_in_buckets`]). `up` is written for every scrape attempt, failed or not,
//! so a missing `up` sample means the replica did not scrape, whatever its targets did. Each
//! hole found is then placed at scrape precision on the replica's own samples ([`edges`]).

pub(crate) mod edges;

/// Unix time in milliseconds, as the Prometheus TSDB keeps it.
pub type Millis = i64;

/// The most holes kept per replica; past this, the two closest are joined (the stretch
/// between them then counts as missing too), so memory stays bounded whatever the retention.
pub const MAX_HOLES: usize = 512;

/// A stretch of time, `[start, end)` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first millisecond.
    pub start: Millis,
    /// The first millisecond after it.
    pub end: Millis,
}

impl Span {
    /// The span from `start` to `end`.
    pub fn new(start: Millis, end: Millis) -> Self {
        Span { start, end }
    }

    /// How many milliseconds of it fall within `[start, end]` (a window's end is inclusive:
    /// a query evaluated at `end` reads the sample at `end`). Nothing of an empty window
    /// (`start > end`, such as a query that reads no data), and never an overflow: the
    /// widest overlap saturates at `Millis::MAX`.
    pub fn overlap(&self, start: Millis, end: Millis) -> Millis {
        if start > end {
            return 0;
        }
        self.end.min(end.saturating_add(1)).saturating_sub(self.start.max(start)).max(0)
    }
}

/// What is known about one replica's data. Immutable once published; the tracker publishes
/// a new one each time it learns something.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    /// The bucket size it was built with (0: never scanned, nothing known).
    pub bucket: Millis,
    /// The scanned range: from the oldest data any replica holds to the last complete
    /// bucket the tracker has asked this replica about.
    pub from: Millis,
    /// See `from`.
    pub to: Millis,
    /// Holes within the scanned range, sorted and disjoint.
    holes: Vec<Span>,
    /// When set, the replica has been down (or restarted) since this time and has not been
    /// asked about it since: everything from here on counts as a hole.
    pub open_from: Option<Millis>,
    /// The replica's `--query.lookback-delta` (how far back an instant selector reads).
    pub lookback: Millis,
}

impl Coverage {
    /// Whether anything is known: a replica never scanned (or not a Prometheus that answers
    /// the scan) is taken to cover everything, so that it is routed to as before.
    pub fn known(&self) -> bool {
        self.bucket > 0
    }

    /// The holes within the scanned range.
    pub fn holes(&self) -> &[Span] {
        &self.holes
    }

    /// Whether the replica holds complete data for `[start, end]` (every replica holds an
    /// empty window). Logarithmic in the holes: a range query asks this at each of its steps.
    pub fn covers(&self, start: Millis, end: Millis) -> bool {
        if start > end {
            return true;
        }
        let first_after = self.holes.partition_point(|h| h.end <= start);
        let holed = self.holes.get(first_after).is_some_and(|h| h.start <= end);
        !holed && self.open_from.is_none_or(|open| end < open)
    }

    /// Milliseconds of `[start, end]` the replica lacks (its open hole included), saturating.
    pub fn missing(&self, start: Millis, end: Millis) -> Millis {
        let open = self.open_from.map_or(0, |open| Span::new(open, Millis::MAX).overlap(start, end));
        self.holes.iter().map(|h| h.overlap(start, end)).fold(open, Millis::saturating_add)
    }

    /// The share of the scanned range without holes (1 when nothing is scanned yet).
    pub fn ratio(&self) -> f64 {
        let span = self.to - self.from;
        if span <= 0 {
            return 1.0;
        }
        let missing: Millis = self.holes.iter().map(|h| h.overlap(self.from, self.to - 1)).sum();
        1.0 - missing as f64 / span as f64
    }

    /// Adds `holes` found by a scan of `range` (all within it), and extends the scanned
    /// range to cover it. Holes already known stay, even within `range`: a scan compares only
    /// the replicas that answered it, so a stretch rescanned while the peer that had data
    /// there is down would otherwise lose its hole. A hole is never taken back; a wrong one
    /// costs a merge or a detour, a forgotten one a gap on a dashboard.
    pub fn scanned(&mut self, range: Span, holes: &[Span]) {
        let mut all: Vec<Span> = Vec::with_capacity(self.holes.len() + holes.len());
        all.extend_from_slice(&self.holes);
        all.extend(holes.iter().map(|h| Span::new(h.start.max(range.start), h.end.min(range.end))));
        all.retain(|h| h.end > h.start);
        all.sort_by_key(|h| h.start);
        self.holes = coalesce(all);
        self.from = if self.to > self.from { self.from.min(range.start) } else { range.start };
        self.to = self.to.max(range.end);
    }
}

/// Joins touching holes, then the closest ones until at most [`MAX_HOLES`] are left.
fn coalesce(sorted: Vec<Span>) -> Vec<Span> {
    let mut holes: Vec<Span> = Vec::with_capacity(sorted.len());
    for hole in sorted {
        match holes.last_mut() {
            Some(last) if hole.start <= last.end => last.end = last.end.max(hole.end),
            _ => holes.push(hole),
        }
    }
    while holes.len() > MAX_HOLES {
        // Quadratic only past the bound, and the bound is small.
        let closest = (1..holes.len()).min_by_key(|&i| holes[i].start - holes[i - 1].end).unwrap_or(1);
        holes[closest - 1].end = holes[closest].end;
        holes.remove(closest);
    }
    holes
}

/// The best replica's count in each bucket of `counts` (see [`holes_in_buckets`]).
pub fn best_counts(counts: &[Vec<f64>]) -> Vec<f64> {
    let buckets = counts.iter().map(Vec::len).max().unwrap_or(0);
    (0..buckets).map(|i| counts.iter().map(|c| count_in(c, i)).fold(0.0, f64::max)).collect()
}

/// A replica's count in bucket `i`: none where it has no number.
fn count_in(counts: &[f64], i: usize) -> f64 {
    counts.get(i).copied().filter(|c| c.is_finite()).unwrap_or(0.0)
}

/// A bucket counts as a hole for a replica holding fewer than this share of the best
/// replica's samples in it: with four scrapes per bucket, one missed scrape of every target
/// (0.75) is a hole, while the odd sample that one replica's scrape timing puts into the
/// neighbouring bucket is not.
pub const COMPLETE_SHARE: f64 = 0.875;

/// The holes per replica in consecutive buckets: `counts[r][i]` is replica `r`'s sample
/// count in bucket `i`, which spans `[first_start + i * bucket, first_start + (i + 1) *
/// bucket)`. A bucket no replica has samples in is a hole for none (nothing was there to
/// hold), and a replica alone is never short of its peers.
pub fn holes_in_buckets(first_start: Millis, bucket: Millis, counts: &[Vec<f64>]) -> Vec<Vec<Span>> {
    let mut holes: Vec<Vec<Span>> = vec![Vec::new(); counts.len()];
    for (i, best) in best_counts(counts).into_iter().enumerate() {
        let count = |r: usize| count_in(&counts[r], i);
        if best <= 0.0 {
            continue;
        }
        let start = first_start + i as Millis * bucket;
        for (r, replica_holes) in holes.iter_mut().enumerate() {
            if count(r) < best * COMPLETE_SHARE {
                match replica_holes.last_mut() {
                    Some(last) if last.end == start => last.end = start + bucket,
                    _ => replica_holes.push(Span::new(start, start + bucket)),
                }
            }
        }
    }
    holes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage(from: Millis, to: Millis, holes: &[(Millis, Millis)]) -> Coverage {
        let mut coverage = Coverage { bucket: 10, lookback: 300_000, ..Coverage::default() };
        let holes: Vec<Span> = holes.iter().map(|&(s, e)| Span::new(s, e)).collect();
        coverage.scanned(Span::new(from, to), &holes);
        coverage
    }

    #[test]
    fn a_window_is_covered_unless_a_hole_or_the_open_hole_touches_it() {
        let mut c = coverage(0, 1000, &[(100, 200)]);
        assert!(c.covers(0, 99) && c.covers(200, 5000), "after the scanned range: live data");
        assert!(!c.covers(0, 100) && !c.covers(199, 300) && !c.covers(150, 150));
        assert_eq!(c.missing(0, 1000), 100);
        assert_eq!(c.missing(150, 160), 11);
        c.open_from = Some(900);
        assert!(c.covers(200, 899) && !c.covers(200, 900));
        assert_eq!(c.missing(950, 1049), 100);
        assert!((coverage(0, 1000, &[(100, 200)]).ratio() - 0.9).abs() < 1e-9);
        assert!(Coverage::default().covers(Millis::MIN, Millis::MAX) && !Coverage::default().known());
    }

    #[test]
    fn a_rescan_adds_holes_and_never_forgets_one() {
        let mut c = coverage(0, 1000, &[(100, 200), (400, 600), (900, 1000)]);
        // Rescanned with only this replica answering (its peer down): nothing is short of a
        // peer, yet the holes it had stay.
        c.scanned(Span::new(500, 1500), &[(1200, 1300)].map(|(s, e)| Span::new(s, e)));
        assert_eq!(c.holes(), &[Span::new(100, 200), Span::new(400, 600), Span::new(900, 1000), Span::new(1200, 1300)]);
        assert_eq!((c.from, c.to), (0, 1500));
        c.scanned(Span::new(150, 450), &[Span::new(150, 450)]);
        assert_eq!(c.holes()[0], Span::new(100, 600), "touching holes join");
    }

    #[test]
    fn memory_stays_bounded_by_joining_the_closest_holes() {
        let holes: Vec<Span> = (0..2000).map(|i| Span::new(i * 100, i * 100 + 10 + (i % 7))).collect();
        let mut c = Coverage { bucket: 10, ..Coverage::default() };
        c.scanned(Span::new(0, 200_000), &holes);
        assert_eq!(c.holes().len(), MAX_HOLES);
        for hole in &holes {
            assert!(!c.covers(hole.start, hole.end - 1), "every hole is still a hole");
        }
        assert!(c.holes().windows(2).all(|w| w[0].end < w[1].start));
    }

    /// Times that break careless arithmetic: the ends of `i64`, the empty window's, and a few
    /// ordinary ones.
    const EDGES: [Millis; 9] = [Millis::MIN, Millis::MIN + 1, -1_000, -1, 0, 1, 1_000, Millis::MAX - 1, Millis::MAX];

    fn random_time(rng: &mut impl rand::Rng) -> Millis {
        use rand::RngExt;
        if rng.random_bool(0.3) { EDGES[rng.random_range(0..EDGES.len())] } else { rng.random_range(-5_000..5_000) }
    }

    #[test]
    fn span_arithmetic_never_overflows_and_agrees_with_counting() {
        let mut rng = rand::rng();
        for _ in 0..20_000 {
            let (a, b, start, end) =
                (random_time(&mut rng), random_time(&mut rng), random_time(&mut rng), random_time(&mut rng));
            let span = Span::new(a.min(b), a.max(b));
            let overlap = span.overlap(start, end);
            assert!(overlap >= 0, "{span:?} over [{start}, {end}]: {overlap}");
            if start > end {
                assert_eq!(overlap, 0, "an empty window overlaps nothing");
            }
            // Small enough to count millisecond by millisecond: the overlap is the count.
            let small = |t: Millis| (-5_000..5_000).contains(&t);
            if [span.start, span.end, start, end].into_iter().all(small) {
                let counted = (start..=end).filter(|t| (span.start..span.end).contains(t)).count() as Millis;
                assert_eq!(overlap, counted, "{span:?} over [{start}, {end}]");
            }
        }
    }

    #[test]
    fn covers_and_missing_agree_for_any_window_including_empty_and_extreme_ones() {
        use rand::RngExt;
        let mut rng = rand::rng();
        for _ in 0..2_000 {
            let mut holes: Vec<(Millis, Millis)> = (0..rng.random_range(0..6))
                .map(|_| {
                    let start = rng.random_range(-4_000..4_000);
                    (start, start + rng.random_range(1..500))
                })
                .collect();
            holes.sort();
            let mut c = coverage(-5_000, 5_000, &holes);
            if rng.random_bool(0.3) {
                c.open_from = Some(random_time(&mut rng));
            }
            for _ in 0..50 {
                let (start, end) = (random_time(&mut rng), random_time(&mut rng));
                let missing = c.missing(start, end);
                assert!(missing >= 0);
                if start > end {
                    assert!(c.covers(start, end) && missing == 0, "every replica holds an empty window");
                    continue;
                }
                let open_touches = c.open_from.is_some_and(|open| end >= open);
                assert_eq!(c.covers(start, end), missing == 0 && !open_touches, "{c:?} over [{start}, {end}]");
            }
        }
    }

    #[test]
    fn buckets_short_of_the_best_replica_are_holes() {
        // Three replicas, five buckets of 4 s: b misses one bucket and part of another; c is
        // a replica started late; nobody has the last bucket.
        let counts =
            vec![vec![40.0, 40.0, 40.0, 41.0, 0.0], vec![40.0, 0.0, 25.0, 40.0, 0.0], vec![0.0, 0.0, 39.0, 40.0]];
        let holes = holes_in_buckets(1000, 4000, &counts);
        assert!(holes[0].is_empty());
        assert_eq!(holes[1], vec![Span::new(5000, 13000)]);
        assert_eq!(holes[2], vec![Span::new(1000, 9000)], "39 of 40 is the neighbouring bucket's sample");
        assert_eq!(holes_in_buckets(0, 10, &[vec![5.0]]), vec![Vec::<Span>::new()], "alone, never short");
        assert_eq!(holes_in_buckets(0, 10, &[vec![f64::NAN], vec![1.0]])[0], vec![Span::new(0, 10)]);
    }
}

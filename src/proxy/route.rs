//! Routing by coverage: given the window of data a query reads, which replica answers it, or
//! which replicas' answers are merged. A pure function of the snapshot, the replicas'
//! published [`Coverage`](crate::coverage::Coverage) and the request's window, so it takes no
//! lock and does no I/O.
//!
//! The order of preference:
//! 1. the replica affinity or the strategy picked, when it covers the window (the usual case:
//!    no replica has a hole there);
//! 2. another selected replica that covers it, then a viable one outside the selection (with
//!    `single-*` strategies the other replicas are exactly where a hole is filled from);
//! 3. for a range query, time slices: each step is answered by a replica that holds that
//!    step's whole read window (the default wherever it does), consecutive steps of one
//!    replica form one sub-range request, and a step no replica holds is answered whole by
//!    the replica missing the least of its window (the answer then says so);
//!    A remote read is cut the same way, into time ranges: its "steps" are stretches of the
//!    window, each held whole by the replica answering it;
//! 4. for an instant query (or a query mpp cannot read, or a remote read whose answer is
//!    streamed chunks), the replica missing the least of what it reads: a value comes whole
//!    from one replica, never stitched from two;
//! 5. for the answers that are unions (series, label names and values, exemplars), a merge:
//!    the selected replica missing the least of the window is the primary, the other viable
//!    replicas add what it lacks.

use std::sync::Arc;

use crate::coverage::Millis;
use crate::registry::Replica;
use crate::selection::Snapshot;
use crate::window::{Endpoint, Read, Steps};

/// The most sub-range requests one range query is cut into. Past it (holes every few steps
/// in several replicas), the query goes whole to the replica missing the least of it.
pub const MAX_SLICES: usize = 32;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// To one replica. `diverted` when coverage chose it over the replica affinity or the
    /// strategy picked (`default`), which lacks data in the window.
    One { replica: Arc<Replica>, diverted: bool },
    /// A range query in time slices, in time order: together they are every step once.
    Slices(Vec<Slice>),
    /// To several: `primary`'s answer, with what it lacks added from `others` (in order).
    Merge { primary: Arc<Replica>, others: Vec<Arc<Replica>> },
}

impl Route {
    /// Its kind and the replicas it asks (each slice's replica in time order), for a trace.
    pub fn describe(&self) -> (&'static str, Vec<String>) {
        match self {
            Route::One { replica, .. } => ("one", vec![replica.url().to_owned()]),
            Route::Slices(slices) => ("slices", slices.iter().map(|s| s.replica.url().to_owned()).collect()),
            Route::Merge { primary, others } => {
                ("merge", std::iter::once(primary).chain(others).map(|r| r.url().to_owned()).collect())
            }
        }
    }
}

/// The steps of a range query one replica answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Who answers them.
    pub replica: Arc<Replica>,
    /// The first step's time (milliseconds).
    pub start: Millis,
    /// The last step's time.
    pub end: Millis,
    /// Runs of steps (first and last time) the replica does not hold whole, because no
    /// replica does: their values may be incomplete.
    pub incomplete: Vec<(Millis, Millis)>,
}

/// The route for a request reading `read`, whose affinity or strategy choice is `default`.
pub fn plan(snapshot: &Snapshot, default: Arc<Replica>, read: &Read) -> Route {
    let (start, end) = (read.window.start, read.window.end);
    // A replica not scanned yet (just started, or a new pod with an empty disk) is taken to
    // cover everything only while no replica's coverage is known.
    let any_known = snapshot.viable.iter().any(|r| r.coverage().known());
    let covers = |r: &Arc<Replica>| {
        let coverage = r.coverage();
        if coverage.known() { coverage.covers(start, end) } else { !any_known }
    };
    let missing = |r: &Arc<Replica>| -> Millis {
        let coverage = r.coverage();
        if coverage.known() {
            coverage.missing(start, end)
        } else if any_known {
            Millis::MAX
        } else {
            0
        }
    };
    if covers(&default) {
        return Route::One { replica: default, diverted: false };
    }
    // Out for its data (ingestion stalled or lagging): not a place to divert to.
    let ejected =
        |r: &Arc<Replica>| snapshot.candidates.iter().any(|c| Arc::ptr_eq(&c.replica, r) && c.data.ejected.is_some());
    let usable: Vec<&Arc<Replica>> = snapshot
        .selected
        .iter()
        .chain(snapshot.viable.iter().filter(|r| !snapshot.selected.contains(r)))
        .filter(|r| !r.health().is_down() && !ejected(r))
        .collect();
    if let Some(replica) = usable.iter().find(|r| covers(r)) {
        return Route::One { replica: (*replica).clone(), diverted: true };
    }
    if let (Endpoint::QueryRange | Endpoint::RemoteRead, Some(steps)) = (read.endpoint, &read.steps) {
        return sliced(steps, default, &usable, any_known);
    }
    if matches!(read.endpoint, Endpoint::Query | Endpoint::QueryRange | Endpoint::RemoteRead) {
        // An instant vector comes whole from one replica, and so does a range query whose
        // steps are unknown: the one missing the least of what the query reads, the default
        // on a tie.
        let best = usable.iter().copied().min_by_key(|r| missing(r)).filter(|r| missing(r) < missing(&default));
        return match best {
            Some(best) => Route::One { replica: best.clone(), diverted: true },
            None => Route::One { replica: default, diverted: false },
        };
    }
    // The primary: the default unless a selected replica misses less of the window.
    let primary = snapshot
        .selected
        .iter()
        .filter(|r| !r.health().is_down())
        .min_by_key(|r| missing(r))
        .filter(|r| missing(r) < missing(&default))
        .cloned()
        .unwrap_or(default);
    let mut others: Vec<Arc<Replica>> = usable.into_iter().filter(|r| **r != primary).cloned().collect();
    others.sort_by_key(|r| missing(r));
    if others.is_empty() {
        return Route::One { replica: primary, diverted: false };
    }
    Route::Merge { primary, others }
}

/// The time slices of a range query that no one replica holds whole: `default` first, then
/// `usable` in order of preference. The default answers every step whose window it holds;
/// another step goes to the replica that answered the step before when that one holds it
/// (fewer slices), else to the first that holds it; a step nobody holds, to the replica
/// missing the least of its window.
fn sliced(steps: &Steps, default: Arc<Replica>, usable: &[&Arc<Replica>], any_known: bool) -> Route {
    let mut replicas: Vec<Arc<Replica>> = vec![default.clone()];
    replicas.extend(usable.iter().filter(|r| ***r != default).map(|r| (*r).clone()));
    let coverages: Vec<_> = replicas.iter().map(|r| r.coverage()).collect();
    let holds = |r: usize, t: Millis| {
        let coverage = &coverages[r];
        if !coverage.known() {
            return !any_known;
        }
        steps.windows_at(t).all(|w| coverage.covers(w.start, w.end))
    };
    let missing = |r: usize, t: Millis| -> Millis {
        let coverage = &coverages[r];
        match (coverage.known(), any_known) {
            (true, _) => steps.windows_at(t).map(|w| coverage.missing(w.start, w.end)).fold(0, Millis::saturating_add),
            (false, true) => Millis::MAX,
            (false, false) => 0,
        }
    };
    // Who answers each step, and whether it holds that step's window.
    let mut chosen: Vec<(usize, bool)> = Vec::with_capacity(steps.count());
    for i in 0..steps.count() {
        let t = steps.time(i);
        let previous = chosen.last().map(|&(r, _)| r);
        let holder = std::iter::once(0).chain(previous).chain(1..replicas.len()).find(|&r| holds(r, t));
        chosen.push(match holder {
            Some(r) => (r, true),
            None => {
                let order = previous.into_iter().chain(0..replicas.len());
                (order.min_by_key(|&r| missing(r, t)).unwrap_or(0), false)
            }
        });
    }
    let mut slices = slices_of(steps, &replicas, &chosen);
    if slices.len() > MAX_SLICES {
        // Too many pieces: the whole range from the replica missing the least of it.
        let best = (0..replicas.len())
            .min_by_key(|&r| (0..steps.count()).map(|i| missing(r, steps.time(i))).fold(0, Millis::saturating_add))
            .unwrap_or(0);
        let whole: Vec<(usize, bool)> = (0..steps.count()).map(|i| (best, holds(best, steps.time(i)))).collect();
        slices = slices_of(steps, &replicas, &whole);
    }
    match slices.as_slice() {
        [] => Route::One { replica: default, diverted: false },
        [only] if only.incomplete.is_empty() => {
            let diverted = only.replica != default;
            Route::One { replica: only.replica.clone(), diverted }
        }
        _ => Route::Slices(slices),
    }
}

/// Consecutive steps answered by one replica, as slices.
fn slices_of(steps: &Steps, replicas: &[Arc<Replica>], chosen: &[(usize, bool)]) -> Vec<Slice> {
    let mut slices: Vec<Slice> = Vec::new();
    let mut previous: Option<(usize, bool)> = None;
    for (i, &(r, held)) in chosen.iter().enumerate() {
        let t = steps.time(i);
        match slices.last_mut() {
            Some(slice) if previous.is_some_and(|(p, _)| p == r) => slice.end = t,
            _ => slices.push(Slice { replica: replicas[r].clone(), start: t, end: t, incomplete: Vec::new() }),
        }
        let slice = slices.last_mut().expect("pushed above");
        if !held {
            match slice.incomplete.last_mut() {
                Some(run) if previous == Some((r, false)) => run.1 = t,
                _ => slice.incomplete.push((t, t)),
            }
        }
        previous = Some((r, held));
    }
    slices
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::coverage::{Coverage, Span};
    use crate::window::Window;

    /// Gives `replica` coverage known from 0 s to 100 s, but for `holes` (milliseconds).
    pub(in crate::proxy) fn with_holes(replica: &Replica, holes: &[(Millis, Millis)]) {
        let mut coverage = Coverage::default();
        (coverage.bucket, coverage.lookback) = (1000, 1000);
        let holes: Vec<Span> = holes.iter().map(|&(s, e)| Span::new(s, e)).collect();
        coverage.scanned(Span::new(0, 100_000), &holes);
        replica.set_coverage(coverage);
    }

    fn snapshot(replicas: &[Arc<Replica>], selected: usize) -> Snapshot {
        Snapshot { selected: replicas[..selected].to_vec(), viable: replicas.to_vec(), ..Snapshot::empty() }
    }

    fn read(endpoint: Endpoint, start: Millis, end: Millis) -> Read {
        Read {
            endpoint,
            window: Window { start, end },
            eval_time: (endpoint == Endpoint::Query).then_some(end),
            steps: None,
        }
    }

    fn one(route: Route) -> (String, bool) {
        match route {
            Route::One { replica, diverted } => (replica.url().to_string(), diverted),
            other => panic!("expected one replica, got {other:?}"),
        }
    }

    #[test]
    fn the_default_keeps_a_window_it_covers_and_loses_one_it_does_not() {
        let r = crate::registry::tests::replicas(&["http://a:1", "http://b:1", "http://c:1"]);
        with_holes(&r[0], &[(10_000, 20_000)]);
        with_holes(&r[1], &[(50_000, 60_000)]);
        let s = snapshot(&r, 2);
        assert_eq!(
            one(plan(&s, r[0].clone(), &read(Endpoint::QueryRange, 30_000, 40_000))),
            ("http://a:1".into(), false)
        );
        assert_eq!(
            one(plan(&s, r[0].clone(), &read(Endpoint::QueryRange, 5_000, 40_000))),
            ("http://b:1".into(), true)
        );
        // c is viable but not selected (single-most-data): it fills in when no selected one covers.
        with_holes(&r[1], &[(15_000, 16_000)]);
        with_holes(&r[2], &[]);
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::Series, 5_000, 40_000))), ("http://c:1".into(), true));
    }

    #[test]
    fn a_window_nobody_covers_is_merged_from_the_least_missing_primary() {
        let r = crate::registry::tests::replicas(&["http://a:1", "http://b:1"]);
        with_holes(&r[0], &[(10_000, 20_000)]);
        with_holes(&r[1], &[(50_000, 52_000)]);
        let s = snapshot(&r, 2);
        match plan(&s, r[0].clone(), &read(Endpoint::Series, 0, 90_000)) {
            Route::Merge { primary, others } => {
                assert_eq!(primary.url(), "http://b:1", "b misses 2 s, a misses 10 s");
                assert_eq!(others.iter().map(|r| r.url()).collect::<Vec<_>>(), ["http://a:1"]);
            }
            other => panic!("expected a merge, got {other:?}"),
        }
        // An instant query goes whole to the replica that misses the least of what it reads.
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::Query, 0, 15_000))), ("http://b:1".into(), true));
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::Query, 0, 51_000))), ("http://b:1".into(), true));
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::Query, 45_000, 51_000))), ("http://a:1".into(), false));
        // A range query whose steps are unknown goes whole to the one missing the least.
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::QueryRange, 0, 90_000))), ("http://b:1".into(), true));
        // A replica that is down is neither primary nor filler.
        r[1].health().mark_down();
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::Series, 0, 90_000))), ("http://a:1".into(), false));
    }

    /// A range query of `expr` from `start` to `end` every second, read as mpp reads it.
    fn range(expr: &str, start: Millis, end: Millis) -> Read {
        let steps = crate::window::step_reads(expr, start, end, 1000, 1000, Millis::MAX).unwrap();
        let window = crate::window::expr_window(expr, start, end, 1000).unwrap();
        Read { endpoint: Endpoint::QueryRange, window, eval_time: None, steps: Some(steps) }
    }

    /// A slice as (replica, first step, last step, incomplete runs).
    type Planned = (String, Millis, Millis, Vec<(Millis, Millis)>);

    fn slices(route: Route) -> Vec<Planned> {
        match route {
            Route::Slices(slices) => {
                slices.into_iter().map(|s| (s.replica.url().to_string(), s.start, s.end, s.incomplete)).collect()
            }
            other => panic!("expected slices, got {other:?}"),
        }
    }

    #[test]
    fn a_range_over_both_replicas_holes_is_cut_where_each_step_is_held() {
        let r = crate::registry::tests::replicas(&["http://a:1", "http://b:1"]);
        with_holes(&r[0], &[(10_000, 20_000)]);
        with_holes(&r[1], &[(50_000, 60_000)]);
        let s = snapshot(&r, 2);
        // `up` reads the second before each step (lookback 1 s): a's hole [10 s, 20 s) spoils
        // the steps 10 s to 20 s, b's the steps 50 s to 60 s; the default keeps the rest.
        let planned = slices(plan(&s, r[0].clone(), &range("up", 0, 90_000)));
        assert_eq!(
            planned,
            vec![
                ("http://a:1".into(), 0, 9_000, vec![]),
                ("http://b:1".into(), 10_000, 20_000, vec![]),
                ("http://a:1".into(), 21_000, 90_000, vec![]),
            ]
        );
        // A 30 s range reaches back over a's hole for 30 s more: b answers those steps.
        let planned = slices(plan(&s, r[0].clone(), &range("rate(up[30s])", 0, 90_000)));
        assert_eq!(
            planned,
            vec![
                ("http://a:1".into(), 0, 9_000, vec![]),
                ("http://b:1".into(), 10_000, 49_000, vec![]),
                ("http://a:1".into(), 50_000, 90_000, vec![]),
            ]
        );
        // With b's hole at 35 s to 40 s, neither holds the steps 35 s to 49 s: each goes whole
        // to the one missing the least of its window (b until 45 s, a tie kept; then a), and
        // the slices say which steps may be incomplete.
        with_holes(&r[1], &[(35_000, 40_000)]);
        let planned = slices(plan(&s, r[0].clone(), &range("rate(up[30s])", 0, 90_000)));
        assert_eq!(
            planned,
            vec![
                ("http://a:1".into(), 0, 9_000, vec![]),
                ("http://b:1".into(), 10_000, 45_000, vec![(35_000, 45_000)]),
                ("http://a:1".into(), 46_000, 90_000, vec![(46_000, 49_000)]),
            ]
        );
    }

    #[test]
    fn a_query_that_reads_nothing_is_held_by_every_replica() {
        let r = crate::registry::tests::replicas(&["http://a:1", "http://b:1"]);
        with_holes(&r[0], &[(10_000, 20_000)]);
        with_holes(&r[1], &[(50_000, 60_000)]);
        let s = snapshot(&r, 2);
        for expr in ["42", "time()", "vector(1)"] {
            assert_eq!(one(plan(&s, r[1].clone(), &range(expr, 0, 90_000))), ("http://b:1".into(), false), "{expr}");
        }
    }

    #[test]
    fn unknown_coverage_covers_everything() {
        let r = crate::registry::tests::replicas(&["http://a:1", "http://b:1"]);
        let s = snapshot(&r, 2);
        assert_eq!(
            one(plan(&s, r[1].clone(), &read(Endpoint::Labels, Millis::MIN, Millis::MAX))),
            ("http://b:1".into(), false)
        );
    }
}

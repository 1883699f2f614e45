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
//! 3. for an instant query, the replica that covers its evaluation time: an instant vector
//!    comes whole from one replica;
//! 4. otherwise a merge: the selected replica missing the least of the window is the
//!    primary, the other viable replicas fill its missing steps.

use std::sync::Arc;

use crate::coverage::Millis;
use crate::registry::Replica;
use crate::selection::Snapshot;
use crate::window::{Endpoint, Read};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// To one replica. `diverted` when coverage chose it over the replica affinity or the
    /// strategy picked (`default`), which lacks data in the window.
    One { replica: Arc<Replica>, diverted: bool },
    /// To several: `primary`'s answer, with what it lacks filled from `others` (in order).
    Merge { primary: Arc<Replica>, others: Vec<Arc<Replica>> },
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
    if read.endpoint == Endpoint::Query {
        // An instant vector comes whole from one replica: the one missing the least of what
        // the query reads, the default on a tie.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::{Coverage, Span};
    use crate::window::Window;

    fn with_holes(replica: &Replica, holes: &[(Millis, Millis)]) {
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
        Read { endpoint, window: Window { start, end }, eval_time: (endpoint == Endpoint::Query).then_some(end) }
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
        match plan(&s, r[0].clone(), &read(Endpoint::QueryRange, 0, 90_000)) {
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
        // A replica that is down is neither primary nor filler.
        r[1].health().mark_down();
        assert_eq!(one(plan(&s, r[0].clone(), &read(Endpoint::QueryRange, 0, 90_000))), ("http://a:1".into(), false));
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

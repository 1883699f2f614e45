//! The retry policy: which requests may be replayed on another replica, how many attempts a
//! request gets, and where the next attempt goes.

use std::sync::Arc;

use http::Method;
use rand::RngExt;

use crate::backend::Backend;
use crate::selection::Snapshot;

/// Attempts per request: the first plus up to two retries, as the original promises.
pub const MAX_ATTEMPTS: usize = 3;

/// Prometheus API paths that only read, and so may be sent again even when a first attempt
/// may have reached a replica. Matched as path suffixes so that a route prefix is allowed.
const READ_ONLY_POSTS: &[&str] = &[
    "/api/v1/query",
    "/api/v1/query_range",
    "/api/v1/query_exemplars",
    "/api/v1/series",
    "/api/v1/labels",
    "/api/v1/format_query",
    "/api/v1/parse_query",
];

/// Whether a request only reads: GET, HEAD and OPTIONS, and POSTs to the query API. Writes
/// (remote write, admin calls, `/-/reload`) are never replayed once they may have been sent.
pub fn replayable(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => true,
        Method::POST => READ_ONLY_POSTS.iter().any(|p| path.ends_with(p)),
        _ => false,
    }
}

/// The replica for the next attempt: a selected one not tried yet and not down, chosen at
/// random; else any such viable one (for `single-most-data`, whose selection is one replica).
pub fn next_backend(snapshot: &Snapshot, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
    let untried = |b: &&Arc<Backend>| !tried.contains(b) && !b.health().is_down();
    pick_random(snapshot.selected.iter().filter(untried))
        .or_else(|| pick_random(snapshot.viable.iter().filter(untried)))
}

/// The replica for an attempt when no selected or viable replica is left (every probe and
/// liveness check is failing): any candidate not tried yet, down or not. A replica too busy
/// to answer its probes within their deadline may still answer queries; one that is gone
/// refuses the connection at once.
pub fn last_resort(snapshot: &Snapshot, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
    pick_random(snapshot.candidates.iter().map(|c| &c.backend).filter(|b| !tried.contains(b)))
}

/// A random one of `pool`, without collecting it (this runs on every request).
fn pick_random<'a>(pool: impl Iterator<Item = &'a Arc<Backend>> + Clone) -> Option<Arc<Backend>> {
    let index = match pool.clone().count() {
        0 => return None,
        1 => 0,
        n => rand::rng().random_range(0..n),
    };
    pool.into_iter().nth(index).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str) -> Arc<Backend> {
        Arc::new(Backend::parse(url).unwrap())
    }

    #[test]
    fn only_reads_are_replayable() {
        assert!(replayable(&Method::GET, "/api/v1/admin/tsdb/snapshot"));
        assert!(replayable(&Method::POST, "/api/v1/query"));
        assert!(replayable(&Method::POST, "/prom/api/v1/query_range"));
        assert!(!replayable(&Method::POST, "/api/v1/admin/tsdb/delete_series"));
        assert!(!replayable(&Method::POST, "/api/v1/write"));
        assert!(!replayable(&Method::PUT, "/-/reload"));
    }

    #[test]
    fn next_backend_avoids_tried_and_falls_back_to_viable() {
        let (a, b) = (backend("http://a:1"), backend("http://b:1"));
        let mut snapshot = Snapshot::empty();
        snapshot.selected = vec![a.clone()];
        snapshot.viable = vec![a.clone(), b.clone()];
        assert_eq!(next_backend(&snapshot, &[]), Some(a.clone()));
        assert_eq!(next_backend(&snapshot, std::slice::from_ref(&a)), Some(b.clone()));
        assert_eq!(next_backend(&snapshot, &[a.clone(), b.clone()]), None);
        b.health().mark_down();
        assert_eq!(next_backend(&snapshot, std::slice::from_ref(&a)), None, "a replica that is down is skipped");
    }

    #[test]
    fn last_resort_tries_every_candidate_down_or_not_once() {
        use crate::selection::CandidateState;
        let (a, b) = (backend("http://a:1"), backend("http://b:1"));
        a.health().mark_down();
        let mut snapshot = Snapshot::empty();
        for backend in [&a, &b] {
            snapshot.candidates.push(CandidateState {
                backend: backend.clone(),
                probe: Default::default(),
                selected: false,
            });
        }
        assert_eq!(next_backend(&snapshot, &[]), None, "nothing selected or viable");
        let first = last_resort(&snapshot, &[]).expect("a candidate");
        let second = last_resort(&snapshot, std::slice::from_ref(&first)).expect("the other candidate");
        assert_ne!(first, second);
        assert_eq!(last_resort(&snapshot, &[first, second]), None);
        assert_eq!(last_resort(&Snapshot::empty(), &[]), None, "no candidates: nothing to try");
    }
}
